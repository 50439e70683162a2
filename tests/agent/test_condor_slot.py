"""A pilot started by HTCondor offers its HTCondor slot (agent/condor.py, agent/slot.py):
the machine ad the starter wrote gives the cores, memory, disk and GPUs, capped by the
node and lowered by slot.toml; the scratch directory holds the work area; the GPUs bound
are the assigned ones, or none when their devices are not known.

The ads under tests/agent/condor are written as a starter writes them (old ClassAd
format, one ``Name = value`` line per attribute, expressions and nested ads among them),
and every reading is checked against HTCondor's own parser (classad2)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import classad2
import psutil
import pytest

from sandbox_agent.agent import condor, gpus, slot
from sandbox_agent.agent.condor import CondorError
from sandbox_agent.images.hostpython import HostPython
from sandbox_agent.policy import compose, load, load_policy
from sandbox_agent.runtime import apptainer, docker
from sandbox_agent.runtime.plan import FixedHost

ADS = Path(__file__).parent / "condor"
DYNAMIC_GPU = ADS / "dynamic-gpu.ad"
BIG_NODE = {"CPUCores": 64, "Memory": 515000, "Disk": 2_000_000}
SMALL_NODE = {"CPUCores": 4, "Memory": 8000, "Disk": 5000}
UUIDS = {  # the driver's view: bus location -> (uuid, device minor)
    "0000:07:00.0": ("GPU-6b3a1e2f-55c1-4e0b-9a7d-1f2e3d4c5b6a", 3),
    "0000:0f:00.0": ("GPU-9c0d4a71-0b8e-4f3c-a2d1-7e6f5a4b3c2d", 0),
    "0000:87:00.0": ("GPU-1e2d3c4b-7788-4a1b-8c2d-0a1b2c3d4e5f", 1),
}


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A node of known size: 64 cores, 515000 MiB, 2 TB free (slot.node is the seam)."""
    sizes = dict(BIG_NODE)
    monkeypatch.setattr(slot, "node", lambda work_area: dict(sizes))
    return sizes


def started_by_condor(ad: Path, **more: str) -> dict[str, str]:
    return {"_CONDOR_MACHINE_AD": str(ad), "BATCH_SYSTEM": "HTCondor", **more}


def with_line(tmp_path: Path, name: str, line: str, base: Path = DYNAMIC_GPU) -> Path:
    """``base`` with the attribute ``name``'s line replaced by ``line`` (or added)."""
    lines = [x for x in base.read_text().splitlines() if not x.startswith(f"{name} = ")]
    out = tmp_path / "machine.ad"
    out.write_text("\n".join(sorted([*lines, line], key=str.casefold)) + "\n")
    return out


def refusal(ad: Path) -> str:
    with pytest.raises(CondorError) as caught:
        condor.read_machine_ad(ad)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(ad))
    return message


# --- the reader agrees with HTCondor's parser ---------------------------------------------


@pytest.mark.parametrize("ad", sorted(ADS.glob("*.ad")), ids=lambda p: p.name)
def test_each_ad_reads_as_htcondor_parses_it(ad: Path) -> None:
    text = ad.read_text()
    parsed = classad2.parseOne(text)
    assert len(parsed) == len(text.splitlines())  # a whole ad: HTCondor took every line
    if parsed["SlotType"] == "Partitionable":
        assert "partitionable slot" in refusal(ad)
        return
    read = condor.read_machine_ad(ad)
    assert read.cpus == parsed["Cpus"] and read.memory_mib == parsed["Memory"]
    assert read.disk_mib == parsed["Disk"] // 1024  # KiB in the ad, MiB in the slot
    assert read.gpus == parsed.get("GPUs")
    assert read.gpu_ids == tuple(re.split(r"[, ]+", parsed.get("AssignedGPUs") or "") if
                                 parsed.get("AssignedGPUs") else ())  # fmt: skip
    assert (read.name, read.slot_type) == (parsed["Name"], parsed["SlotType"])


def test_an_ad_htcondor_prints_reads_back(tmp_path: Path) -> None:
    # the starter writes the ad with HTCondor's own printer: literals, a nested ad, a list
    # and expressions, as classad2 prints them in the old format
    ad = classad2.ClassAd()
    ad["Cpus"], ad["Memory"], ad["Disk"], ad["GPUs"] = 6, 12288, 3145728, 1
    ad["TotalCpus"] = 32.0
    ad["AssignedGPUs"] = "GPU-9c0d4a71"
    ad["Name"], ad["SlotType"], ad["DynamicSlot"] = "slot1_2@wn.example.org", "Dynamic", True
    ad["Start"] = classad2.ExprTree("KeyboardIdle > 15 * 60")
    ad["SlotWeight"] = classad2.ExprTree("Cpus")
    ad["GPUs_GPU_9c0d4a71"] = classad2.ExprTree('[ Id = "GPU-9c0d4a71"; ECCEnabled = true ]')
    ad["AvailableGPUs"] = classad2.ExprTree("{ GPUs_GPU_9c0d4a71 }")
    path = tmp_path / ".machine.ad"
    path.write_text(ad.printOld())
    read = condor.read_machine_ad(path)
    assert (read.cpus, read.memory_mib, read.disk_mib, read.gpus) == (6, 12288, 3072, 1)
    assert read.gpu_ids == ("GPU-9c0d4a71",) and read.name == "slot1_2@wn.example.org"


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("Cpus = 8.0", 8),  # a real, as TotalCpus often is: floored
        ("Cpus = 7.9", 7),  # never rounded up: the slot does not hold the eighth core
        ("Cpus = 1.6E+1", 16),
        ("cpus = 8", 8),  # names ignore case, in ClassAds as here
        ("  Cpus   =   8   ", 8),
    ],
)
def test_literal_forms_read_as_htcondor_reads_them(tmp_path: Path, line: str,
                                                   value: int) -> None:  # fmt: skip
    ad = with_line(tmp_path, "Cpus", line)
    parsed = classad2.parseOne(ad.read_text())
    assert int(parsed["Cpus"]) == value
    assert condor.read_machine_ad(ad).cpus == value


# --- refused in one line: what is not a literal, or not an ad -----------------------------


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("Memory", "Memory = 2 * 8000"),
        ("Memory", "Memory = TotalSlotMemory"),
        ("Cpus", "Cpus = ifThenElse(DynamicSlot, 8, 64)"),
        ("Disk", "Disk = (20480000)"),
        ("GPUs", "GPUs = size(AvailableGPUs)"),
        ("AssignedGPUs", 'AssignedGPUs = strcat("GPU-", "6b3a1e2f")'),
        ("Cpus", "Cpus = +8"),
    ],
)
def test_an_expression_where_a_literal_is_needed_is_refused(tmp_path: Path, name: str,
                                                            line: str) -> None:  # fmt: skip
    ad = with_line(tmp_path, name, line)
    parsed = classad2.parseOne(ad.read_text())
    assert isinstance(parsed[name], classad2.ExprTree)  # HTCondor too sees an expression
    number = ad.read_text().splitlines().index(line) + 1
    message = refusal(ad)
    assert f"{ad}:{number}: {name} = " in message and "not a literal value" in message
    with pytest.raises(ValueError, match="never evaluates"):  # what the pilot loop catches
        slot.describe(tmp_path, tmp_path / "work", 3600, started_by_condor(ad))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("Cpus = 010", "not a literal"),  # HTCondor's parser drops the whole ad on this
        ("Cpus = 0x10", "not a literal"),
        ("Cpus = 8 9", "not a literal"),  # HTCondor's takes 8 and drops the rest
        ("Cpus = 8;", "not a literal"),
        ("Cpus = 99999999999999999999", "beyond a ClassAd integer"),  # HTCondor's: 0
        ("Cpus = -8", "not an amount"),
        ('Cpus = "8"', "not an amount"),
        ("Cpus = true", "not an amount"),
        ("Cpus = undefined", "not a literal"),
        ('Name = "slot1_3@node\\"17"', "not a literal"),  # no escapes in what we read
        ("Name = 17", "must be a string"),
        ('AssignedGPUs = "GPU-6b3a1e2f,../../dev/sda"', "not a GPU id"),
    ],
)
def test_what_htcondor_might_read_otherwise_is_refused(tmp_path: Path, line: str,
                                                       why: str) -> None:  # fmt: skip
    name = line.split()[0]
    assert why in refusal(with_line(tmp_path, name, line))


def test_an_attribute_given_twice_is_refused(tmp_path: Path) -> None:
    ad = tmp_path / "machine.ad"
    ad.write_text(DYNAMIC_GPU.read_text() + "CPUS = 64\n")
    assert classad2.parseOne(ad.read_text())["Cpus"] == 64  # HTCondor: the last one wins
    assert "Cpus is given again (first at line" in refusal(ad)


@pytest.mark.parametrize("name", ["Cpus", "Memory", "Disk"])
def test_an_ad_without_cpus_memory_or_disk_is_refused(tmp_path: Path, name: str) -> None:
    ad = tmp_path / "machine.ad"
    ad.write_text("".join(x for x in DYNAMIC_GPU.read_text().splitlines(keepends=True)
                          if not x.startswith(f"{name} = ")))  # fmt: skip
    assert f"no {name} attribute" in refusal(ad)


def test_a_partitionable_slots_ad_is_refused() -> None:
    assert "not what this job holds" in refusal(ADS / "partitionable.ad")


def test_a_missing_ad_file_is_refused_in_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "dir_4821" / ".machine.ad"
    with pytest.raises(CondorError) as caught:
        slot.describe(tmp_path, tmp_path / "work", 3600, started_by_condor(gone))
    assert str(caught.value) == f"{gone}: cannot read the machine ad: No such file or directory"


def test_an_oversized_ad_file_is_refused_in_one_line(tmp_path: Path) -> None:
    ad = tmp_path / ".machine.ad"
    padding = 'Padding = "' + "x" * condor.AD_LIMIT + '"\n'
    ad.write_text(DYNAMIC_GPU.read_text() + padding)
    assert classad2.parseOne(ad.read_text())["Cpus"] == 8  # a valid ad, only too big
    assert "more than 1 MiB" in refusal(ad)


def test_a_long_line_of_spaces_is_read_in_linear_time(tmp_path: Path) -> None:
    # a backtracking pattern over "Name = value   ...   x" takes hours on a line this long
    ad = with_line(tmp_path, "Cpus", "Cpus = 8" + " " * 900_000 + "9")
    started = time.monotonic()
    assert "not a literal" in refusal(ad)
    assert time.monotonic() - started < 2


def test_a_fifo_as_the_ad_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / ".machine.ad"
    os.mkfifo(fifo)
    assert "not a regular file" in refusal(fifo)


def test_a_nul_byte_is_refused(tmp_path: Path) -> None:
    ad = tmp_path / ".machine.ad"
    ad.write_bytes(DYNAMIC_GPU.read_bytes().replace(b"Cpus = 8\n", b"Cpus = 8\x00\n"))
    assert "NUL byte" in refusal(ad)


def test_a_relative_ad_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CondorError, match="not an absolute path"):
        condor.machine_ad({"_CONDOR_MACHINE_AD": ".machine.ad"})


# --- the slot offered ---------------------------------------------------------------------


def test_a_dynamic_slot_with_8_cores_16000_mib_and_gpus(tmp_path: Path, node: dict) -> None:
    offered, origins = slot.explain(tmp_path, tmp_path / "work", 3600,
                                    started_by_condor(DYNAMIC_GPU))  # fmt: skip
    assert offered["CPUCores"] == 8 and offered["Memory"] == 16000
    assert offered["Disk"] == 20000 and offered["GPUs"] == 2  # 20480000 KiB
    for name in ("CPUCores", "Memory", "Disk", "GPUs"):
        assert origins[name] == f"HTCondor machine ad {DYNAMIC_GPU}"
    assert origins["TTL"] == "agent" and offered["TTL"] == 3600
    assert slot.describe(tmp_path, tmp_path / "work", 3600, started_by_condor(DYNAMIC_GPU)) \
        == offered  # fmt: skip
    assert condor.read_machine_ad(DYNAMIC_GPU).memory_per_core_mib == 2000


def test_a_slot_without_gpus_offers_no_gpus_attribute(tmp_path: Path, node: dict) -> None:
    offered = slot.describe(tmp_path, tmp_path / "work", 3600,
                            started_by_condor(ADS / "dynamic-cpu.ad"))  # fmt: skip
    assert (offered["CPUCores"], offered["Memory"], offered["Disk"]) == (1, 2048, 2048)
    assert "GPUs" not in offered


def test_without_an_ad_the_node_is_measured_as_before(tmp_path: Path) -> None:
    for environ in ({}, {"_CONDOR_MACHINE_AD": ""}, {"BATCH_SYSTEM": "HTCondor"}):
        offered, origins = slot.explain(tmp_path, tmp_path, 3600, environ)
        assert offered["CPUCores"] == len(os.sched_getaffinity(0))
        assert offered["Memory"] == psutil.virtual_memory().total // (1 << 20)
        assert abs(offered["Disk"] - shutil.disk_usage(tmp_path).free // (1 << 20)) < 64
        assert "GPUs" not in offered
        assert {origins[n] for n in ("CPUCores", "Memory", "Disk")} == {"node"}


def test_ad_values_above_the_node_are_capped_by_the_node(tmp_path: Path,
                                                         node: dict) -> None:  # fmt: skip
    node.update(SMALL_NODE)
    offered, origins = slot.explain(tmp_path, tmp_path / "work", 3600,
                                    started_by_condor(DYNAMIC_GPU))  # fmt: skip
    assert (offered["CPUCores"], offered["Memory"], offered["Disk"]) == (4, 8000, 5000)
    assert origins["CPUCores"] == f"node (the HTCondor machine ad {DYNAMIC_GPU} says 8, " \
        "more than the node has)"  # fmt: skip
    assert offered["GPUs"] == 2  # the node does not count GPUs: the ad's word


def test_ad_values_above_the_real_node_are_capped_by_it(tmp_path: Path) -> None:
    huge = with_line(tmp_path, "Cpus", "Cpus = 100000")
    huge = with_line(tmp_path, "Memory", "Memory = 1000000000000", base=huge)
    offered = slot.describe(tmp_path, tmp_path, 3600, started_by_condor(huge))
    assert offered["CPUCores"] == len(os.sched_getaffinity(0))
    assert offered["Memory"] == psutil.virtual_memory().total // (1 << 20)


def test_slot_toml_lowers_the_slot_and_never_raises_it(tmp_path: Path, node: dict) -> None:
    (tmp_path / "slot.toml").write_text(
        'Site = "ALICE::Example"\nCPUCores = 2\nmemory = 64000\nGPUs = 1\nDisk = 999999\n'
    )
    offered, origins = slot.explain(tmp_path, tmp_path / "work", 3600,
                                    started_by_condor(DYNAMIC_GPU))  # fmt: skip
    site = str(tmp_path / "slot.toml")
    assert (offered["CPUCores"], origins["CPUCores"]) == (2, site)
    assert (offered["GPUs"], origins["GPUs"]) == (1, site)
    assert offered["Memory"] == 16000 and origins["Memory"].startswith("HTCondor machine ad")
    assert offered["Disk"] == 20000 and offered["Site"] == "ALICE::Example"
    (tmp_path / "slot.toml").write_text("GPUs = 8\nTTL = 600\n")
    offered, origins = slot.explain(tmp_path, tmp_path / "work", 3600,
                                    started_by_condor(DYNAMIC_GPU))  # fmt: skip
    assert offered["GPUs"] == 2 and (offered["TTL"], origins["TTL"]) == (600, site)


# --- the scratch directory ----------------------------------------------------------------


def test_the_scratch_directory_holds_the_work_area(tmp_path: Path) -> None:
    scratch = tmp_path / "execute" / "dir_4821"
    scratch.mkdir(parents=True)
    environ = {"_CONDOR_SCRATCH_DIR": str(scratch)}
    assert condor.scratch_dir(environ) == scratch
    assert condor.work_area(environ) == scratch / "sandbox-agent-work"
    assert condor.scratch_dir({}) is None and condor.work_area({"_CONDOR_SCRATCH_DIR": ""}) \
        is None  # fmt: skip


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ("execute/dir_4821", "is not an absolute path"),
        ("{tmp}/gone", "No such file or directory"),
        ("{tmp}/file", "is not a directory"),
    ],
)
def test_a_scratch_directory_that_cannot_serve_is_refused(tmp_path: Path, given: str,
                                                          why: str) -> None:  # fmt: skip
    (tmp_path / "file").write_text("")
    value = given.format(tmp=tmp_path)
    with pytest.raises(CondorError) as caught:
        condor.work_area({"_CONDOR_SCRATCH_DIR": value})
    assert str(caught.value) == f"_CONDOR_SCRATCH_DIR={value!r}" + (
        f": {why}" if why[0].isupper() else f" {why}"
    )


# --- the GPUs: the environment's word against the ad's ------------------------------------


def test_the_starters_copy_of_assigned_gpus_must_agree(tmp_path: Path) -> None:
    same = started_by_condor(DYNAMIC_GPU, _CONDOR_AssignedGPUs="GPU-6b3a1e2f, GPU-9c0d4a71")
    assert condor.machine_ad(same).gpu_ids == ("GPU-6b3a1e2f", "GPU-9c0d4a71")
    other = started_by_condor(DYNAMIC_GPU, _CONDOR_AssignedGPUs="GPU-1e2d3c4b,GPU-5a6b7c8d")
    with pytest.raises(CondorError, match="_CONDOR_AssignedGPUs='GPU-1e2d3c4b") as caught:
        condor.machine_ad(other)
    assert "\n" not in str(caught.value)


def test_an_ad_without_assigned_gpus_ignores_the_unassigned_value() -> None:
    environ = started_by_condor(ADS / "dynamic-cpu.ad", _CONDOR_AssignedGPUs="10000",
                                CUDA_VISIBLE_DEVICES="10000")  # fmt: skip
    ad = condor.machine_ad(environ)
    assert ad.gpu_ids == () and ad.gpus is None
    assert [n.split("=")[0] for n in ad.notes] == ["_CONDOR_AssignedGPUs"]


@pytest.mark.parametrize(
    ("visible", "agrees"),
    [
        ("GPU-6b3a1e2f,GPU-9c0d4a71", True),  # the ids as assigned
        # the starter's rewrite from the ad's nested GPU ads: the full uuids
        ("GPU-9c0d4a71-0b8e-4f3c-a2d1-7e6f5a4b3c2d,GPU-6b3a1e2f-55c1-4e0b-9a7d-1f2e3d4c5b6a", True),
        ("0,1", False),  # what an index would say: another GPU, perhaps
        ("GPU-6b3a1e2f", False),
    ],
)
def test_cuda_visible_devices_never_overrules_the_ad(visible: str, agrees: bool) -> None:
    ad = condor.machine_ad(started_by_condor(DYNAMIC_GPU, CUDA_VISIBLE_DEVICES=visible))
    assert ad.gpu_ids == ("GPU-6b3a1e2f", "GPU-9c0d4a71")  # the ad holds either way
    assert (ad.notes == ()) is agrees
    if not agrees:
        assert ad.notes[0].startswith(f"CUDA_VISIBLE_DEVICES={visible!r} is not what")


def test_index_ids_agree_with_their_default_rewrite(tmp_path: Path) -> None:
    ad = with_line(tmp_path, "AssignedGPUs", 'AssignedGPUs = "CUDA2,CUDA3"')
    read = condor.machine_ad(started_by_condor(ad, CUDA_VISIBLE_DEVICES="2,3",
                                               GPU_DEVICE_ORDINAL="2,3"))  # fmt: skip
    assert read.gpu_ids == ("CUDA2", "CUDA3") and read.notes == ()


# --- the GPUs: their device nodes ---------------------------------------------------------


@pytest.fixture
def driver(tmp_path: Path) -> tuple[Path, Path]:
    """An NVIDIA driver's /proc/driver/nvidia/gpus and a /dev of its nodes (symlinks to
    /dev/null: character devices any user can make)."""
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    for bus, (uuid, minor) in UUIDS.items():
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(
            f"Model: \t\t NVIDIA A100-SXM4-40GB\nIRQ:   \t\t 183\nGPU UUID: \t {uuid}\n"
            f"Video BIOS: \t 92.00.36.00.01\nBus Type: \t PCIe\nBus Location: \t {bus}\n"
            f"Device Minor: \t {minor}\nGPU Excluded:\t No\n"
        )
        (dev / f"nvidia{minor}").symlink_to("/dev/null")
    for name in ("nvidiactl", "nvidia-uvm"):  # no nvidia-uvm-tools on this node
        (dev / name).symlink_to("/dev/null")
    return proc, dev


def test_assigned_uuid_gpus_map_to_their_device_minors(driver: tuple[Path, Path]) -> None:
    proc, dev = driver
    found = condor.machine_ad(started_by_condor(DYNAMIC_GPU)).devices(proc, dev)
    # GPU-6b3a1e2f is the first on the bus, and its minor is 3: never /dev/nvidia0
    assert found.paths == (f"{dev}/nvidia3", f"{dev}/nvidia0", f"{dev}/nvidiactl",
                           f"{dev}/nvidia-uvm")  # fmt: skip
    assert found.unmapped == () and found.refusal() is None
    full = condor.gpu_devices(["GPU-1e2d3c4b-7788-4a1b-8c2d-0a1b2c3d4e5f"], proc, dev)
    assert found.ids == ("GPU-6b3a1e2f", "GPU-9c0d4a71") and full.paths[0] == f"{dev}/nvidia1"
    shared = condor.gpu_devices(["GPU-9c0d4a71", "GPU-9c0d4a71"], proc, dev)  # -repeat
    assert shared.paths == (f"{dev}/nvidia0", f"{dev}/nvidiactl", f"{dev}/nvidia-uvm")


@pytest.mark.parametrize(
    ("gpu", "why"),
    [
        ("CUDA0", "CUDA<N> is CUDA's enumeration index, not the device minor"),
        ("MIG-4a8b2c1d-0e9f-5a6b-7c8d-9e0f1a2b3c4d", "a MIG instance"),
        ("OCL0", "not an NVIDIA GPU id"),
        ("GPU-deadbeef", "the driver lists no GPU(s) with this uuid"),
    ],
)
def test_gpus_whose_device_is_unknowable_are_not_guessed(driver: tuple[Path, Path], gpu: str,
                                                         why: str) -> None:  # fmt: skip
    proc, dev = driver
    found = condor.gpu_devices(["GPU-9c0d4a71", gpu], proc, dev)
    assert len(found.unmapped) == 1 and found.unmapped[0].startswith(f"{gpu}: {why}")
    assert found.refusal() == f"cannot bind the GPUs HTCondor assigned: {found.unmapped[0]}"
    assert found.paths[0] == f"{dev}/nvidia0"  # the one that is known is still named


def test_a_short_id_two_gpus_share_is_not_guessed(driver: tuple[Path, Path]) -> None:
    proc, dev = driver
    twin = proc / "0000:88:00.0"
    twin.mkdir()
    twin.joinpath("information").write_text(
        "GPU UUID: \t GPU-6b3a1e2f-0000-4000-8000-000000000000\nDevice Minor: \t 2\n"
    )
    found = condor.gpu_devices(["GPU-6b3a1e2f"], proc, dev)
    assert found.paths == () and "lists 2 GPU(s) with this uuid" in found.unmapped[0]


def test_no_driver_or_no_device_node_binds_nothing(driver: tuple[Path, Path],
                                                   tmp_path: Path) -> None:  # fmt: skip
    proc, dev = driver
    found = condor.gpu_devices(["GPU-6b3a1e2f"], tmp_path / "no-driver", dev)
    assert found.paths == () and "is not readable: no NVIDIA driver" in found.unmapped[0]
    (dev / "nvidia3").unlink()
    (dev / "nvidia3").write_text("")  # a regular file is no GPU
    found = condor.gpu_devices(["GPU-6b3a1e2f"], proc, dev)
    assert found.paths == () and found.unmapped == (
        f"GPU-6b3a1e2f: {dev}/nvidia3 is not a character device",
    )


def test_a_slot_that_counts_more_gpus_than_it_names(driver: tuple[Path, Path],
                                                    tmp_path: Path) -> None:  # fmt: skip
    proc, dev = driver
    ad = with_line(tmp_path, "AssignedGPUs", 'AssignedGPUs = "GPU-9c0d4a71"')
    found = condor.read_machine_ad(ad).devices(proc, dev)
    assert found.paths[0] == f"{dev}/nvidia0"
    assert found.unmapped == (f"{ad}: GPUs = 2 but AssignedGPUs names 1: the others' "
                              "devices are unknown",)  # fmt: skip
    assert condor.read_machine_ad(ADS / "dynamic-cpu.ad").devices(proc, dev).paths == ()


# --- the GPUs a job is given: the slot's, never the node's ------------------------------------


def test_a_gpu_policy_binds_exactly_the_assigned_gpus(driver: tuple[Path, Path]) -> None:
    """gpu.toml names /dev/nvidia0 and lets runtimes add every GPU; in this slot the
    job gets the nodes of GPU-6b3a1e2f (minor 3) and GPU-9c0d4a71 (minor 0) alone, with
    the shared nodes the node has, each required, and no runtime's all-GPU flag."""
    proc, dev = driver
    policy = load_policy("gpu")
    got = gpus.assigned(policy, started_by_condor(DYNAMIC_GPU), proc, dev)
    paths = got.value("devices.paths")
    assert f"{dev}/nvidia3" in paths and f"{dev}/nvidia0" in paths
    assert "/dev/nvidia0" not in paths  # the policy's fixed one is gone
    assert [p for p in paths if re.fullmatch(r".*/nvidia[0-9]+", p)] == [
        f"{dev}/nvidia3",
        f"{dev}/nvidia0",
    ]
    assert "/dev/nvidiactl" in paths  # the policy's shared nodes stay
    assert got.value("devices.gpu") == "assigned"
    assert got["devices.gpu"].origin == f"slot: AssignedGPUs ({DYNAMIC_GPU})"
    assert set(got.value("filesystem.required")) >= {f"{dev}/nvidia3", f"{dev}/nvidia0"}


def test_an_unmappable_gpu_refuses_the_slot(tmp_path: Path, driver: tuple[Path, Path]) -> None:
    proc, dev = driver
    ad = with_line(tmp_path, "AssignedGPUs", 'AssignedGPUs = "CUDA0"')
    with pytest.raises(CondorError) as info:
        gpus.assigned(load_policy("gpu"), started_by_condor(ad), proc, dev)
    assert str(info.value).startswith(f"{ad}: cannot bind the GPUs HTCondor assigned: CUDA0: ")


def test_no_slot_or_no_gpu_policy_changes_nothing(driver: tuple[Path, Path]) -> None:
    proc, dev = driver
    policy = load_policy("gpu")
    assert gpus.assigned(policy, {}, proc, dev) is policy
    default = load_policy("default")
    assert gpus.assigned(default, started_by_condor(DYNAMIC_GPU), proc, dev) is default


def test_no_runtime_adds_gpus_of_its_own_to_the_assigned(
    tmp_path: Path, driver: tuple[Path, Path]
) -> None:
    """Docker's --gpus all and Apptainer's --nv bind every GPU of the node: with the
    slot's GPUs assigned, neither is given, and each assigned node is bound alone."""
    proc, dev = driver
    tests_policies = Path(__file__).resolve().parents[1] / "runtime" / "policies"
    for name in ("images.toml", "docker.toml"):
        shutil.copy(tests_policies / name, tmp_path / name)
    (tmp_path / "gpudocker.toml").write_text(
        'extends = "docker"\n[devices]\ngpu = "nvidia"\n'
        'paths = ["/dev/nvidiactl", "/dev/nvidia0"]\n'
    )
    policy = load_policy("gpudocker", [tmp_path, load.SHIPPED])
    host = FixedHost({f"{dev}/nvidia3": "file", f"{dev}/nvidia0": "file",
                      f"{dev}/nvidiactl": "file", "/dev/nvidiactl": "file",
                      "/dev/nvidia0": "file"}, landlock=6,
                     interpreter=HostPython(binds=(), command=("/usr/bin/python3",)))  # fmt: skip
    for given, gpu_flags in (
        (policy, True),
        (gpus.assigned(policy, started_by_condor(DYNAMIC_GPU), proc, dev), False),
    ):
        effective = compose(given)
        plan = docker.render(effective, ["true"], workdir="/srv/w", engine="docker", host=host,
                             rootless=False)  # fmt: skip
        assert ("--gpus" in plan.argv) is gpu_flags
        devices = [plan.argv[n + 1] for n, w in enumerate(plan.argv) if w == "--device"]
        if not gpu_flags:
            assert f"{dev}/nvidia3" in devices and "/dev/nvidia0" not in devices
        plan = apptainer.render(effective, ["true"], workdir="/srv/w", host=host)
        assert ("--nv" in plan.argv) is gpu_flags


def test_per_gpu_nodes_are_narrowed_whatever_devices_gpu_says(
    tmp_path: Path, driver: tuple[Path, Path]
) -> None:
    """A site policy that lists /dev/nvidia0 and /dev/nvidia1 in devices.paths with no
    devices.gpu still gets only the slot's GPUs under HTCondor."""
    proc, dev = driver
    (tmp_path / "site.toml").write_text(
        'extends = "default"\n[devices]\n'
        'paths = ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1"]\n'
    )
    policy = load_policy("site", [tmp_path, load.SHIPPED])
    got = gpus.assigned(policy, started_by_condor(DYNAMIC_GPU), proc, dev)
    paths = got.value("devices.paths")
    assert "/dev/nvidia0" not in paths and "/dev/nvidia1" not in paths
    assert f"{dev}/nvidia3" in paths and f"{dev}/nvidia0" in paths and "/dev/nvidiactl" in paths
    assert got.value("devices.gpu") == "none"  # no runtime flag was asked, none is added
