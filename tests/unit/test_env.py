"""Who-am-I detection from each launcher's environment (plain dicts: no process group, no MPI)."""
import pytest

from orbit.parallel.env import (SLURM_PORT_BASE, SLURM_PORT_SPAN, LaunchInfo, detect_launch, parse_nodelist,
                                parse_tasks_per_node, pick_device, slurm_port)


@pytest.mark.parametrize("text, hosts", [
    ("frontier[00001-00004,00010]",
     ["frontier00001", "frontier00002", "frontier00003", "frontier00004", "frontier00010"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("node[01-02]-ib", ["node01-ib", "node02-ib"]),
    ("x[08-10]", ["x08", "x09", "x10"]),  # the padding of the start is kept past 9
    ("n[9-11]", ["n9", "n10", "n11"]),  # no padding: no leading zero
    ("login1", ["login1"]),
    ("a1,b[2,4],c", ["a1", "b2", "b4", "c"]),  # commas inside brackets vs between groups
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),  # several brackets: product, as Slurm does
    ("127.0.0.[1-2]\n", ["127.0.0.1", "127.0.0.2"]),
])
def test_parse_nodelist(text, hosts):
    assert parse_nodelist(text) == hosts


@pytest.mark.parametrize("text, message", [
    ("", "empty nodelist"),
    ("a[1-2", "unclosed '['"),
    ("a]1", "unmatched ']'"),
    ("a[[1]]", "nested '['"),
    ("a[]", "bad range ''"),
    ("a[x-2]", "bad range 'x-2'"),
    ("a[3-1]", "runs backwards"),
    ("a,,b", "empty host name"),
    ("a[1-2],", "empty host name"),
    ("a b", "bad host name 'a b'"),
])
def test_parse_nodelist_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_nodelist(text)


def test_parse_tasks_per_node():
    assert parse_tasks_per_node("8(x4)") == [8, 8, 8, 8]
    assert parse_tasks_per_node("2(x2),1") == [2, 2, 1]
    assert parse_tasks_per_node("3") == [3]
    with pytest.raises(ValueError, match="8x4"):
        parse_tasks_per_node("8x4")


def test_single_process():
    info = detect_launch({}, num_gpus=0)
    assert info == LaunchInfo("single-process", 0, 0, 1, 1, None, None, info.host, "cpu", "gloo")
    assert detect_launch({}, num_gpus=1).device == "cuda:0"


TORCHRUN = {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
            "MASTER_ADDR": "node07", "MASTER_PORT": "29500"}


def test_torchrun():
    info = detect_launch(TORCHRUN, num_gpus=4)
    assert (info.launcher, info.rank, info.local_rank, info.world_size, info.local_world_size) == \
        ("torchrun", 5, 1, 8, 4)
    assert (info.master_addr, info.master_port, info.device, info.backend) == ("node07", 29500, "cuda:1", "nccl")
    assert detect_launch(TORCHRUN, num_gpus=0).to_dict()["device"] == "cpu"


def test_torchrun_under_srun_is_torchrun():
    """torchrun started by srun: the process is torchrun's rank 5, not Slurm's task 1."""
    info = detect_launch({**TORCHRUN, "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                          "SLURM_TASKS_PER_NODE": "1(x2)", "SLURM_NODELIST": "n[1-2]", "SLURM_STEP_ID": "0"},
                         num_gpus=0)
    assert (info.launcher, info.rank, info.world_size) == ("torchrun", 5, 8)


# Task 13 of 32 on the second of four Frontier nodes, 8 tasks each (one GCD bound to each task).
SRUN = {"SLURM_PROCID": "13", "SLURM_LOCALID": "5", "SLURM_NTASKS": "32", "SLURM_NODEID": "1",
        "SLURM_TASKS_PER_NODE": "8(x4)", "SLURM_JOB_ID": "1234567", "SLURM_STEP_ID": "0",
        "SLURM_STEP_NODELIST": "frontier[00001-00003,00010]", "SLURM_NODELIST": "frontier[00001-00003,00010]"}


def test_batch_script_without_srun_is_one_process():
    """`python -m orbit` typed in an sbatch script: Slurm sets SLURM_PROCID=0 there too, but no step."""
    batch = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP")}
    assert detect_launch({**batch, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, num_gpus=0).launcher == "single-process"


def test_srun_multi_node():
    info = detect_launch(SRUN, num_gpus=1)
    assert (info.launcher, info.rank, info.local_rank, info.world_size, info.local_world_size) == \
        ("srun", 13, 5, 32, 8)
    assert info.master_addr == "frontier00001"
    assert info.master_port == SLURM_PORT_BASE + 1234567 % SLURM_PORT_SPAN
    assert (info.device, info.backend) == ("cuda:0", "nccl")  # --gpus-per-task=1: each task sees one GPU
    assert detect_launch(SRUN, num_gpus=8).device == "cuda:5"  # all 8 GCDs visible: pick by local rank


def test_srun_port_and_address_overrides_and_uneven_nodes():
    env = {**SRUN, "MASTER_PORT": "3442", "MASTER_ADDR": "10.128.0.1", "SLURM_TASKS_PER_NODE": "8(x3),2",
           "SLURM_NODEID": "3", "SLURM_LOCALID": "1", "SLURM_PROCID": "25", "SLURM_NTASKS": "26"}
    info = detect_launch(env, num_gpus=0)
    assert (info.master_addr, info.master_port, info.local_world_size, info.device) == ("10.128.0.1", 3442, 2, "cpu")
    # The step's own values win over the allocation's: `srun -n 4` inside a bigger job.
    step = detect_launch({**SRUN, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "4",
                          "SLURM_STEP_TASKS_PER_NODE": "4", "SLURM_NODEID": "0",
                          "SLURM_STEP_NODELIST": "frontier00010"}, num_gpus=0)
    assert (step.world_size, step.local_world_size, step.master_addr) == (4, 4, "frontier00010")


def test_slurm_port_is_unprivileged_and_differs_between_steps():
    ports = {slurm_port(job, step) for job in (1, 99999, 4_000_000_000) for step in (0, 1, 2)}
    assert len(ports) == 9
    assert all(SLURM_PORT_BASE <= p < SLURM_PORT_BASE + SLURM_PORT_SPAN < 32768 for p in ports)


OPENMPI = {"OMPI_COMM_WORLD_RANK": "6", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "2",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}


def test_openmpi_inside_a_slurm_allocation():
    """mpirun within sbatch inherits SLURM_PROCID of its proxy: the MPI variables win."""
    info = detect_launch({**OPENMPI, "SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0",
                          "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_NODELIST": "n[1-2]", "SLURM_STEP_ID": "0"},
                         num_gpus=4)
    assert (info.launcher, info.rank, info.local_rank, info.world_size, info.local_world_size) == \
        ("mpirun", 6, 2, 8, 4)
    assert (info.master_addr, info.master_port, info.device) == (None, None, "cuda:2")  # init asks MPI


def test_mpich_hydra_and_cray_pals():
    hydra = detect_launch({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
                          num_gpus=0)
    assert (hydra.launcher, hydra.rank, hydra.world_size, hydra.local_rank, hydra.local_world_size) == \
        ("mpirun", 3, 4, 1, 2)
    pals = detect_launch({"PMI_RANK": "9", "PMI_SIZE": "16", "PALS_LOCAL_RANKID": "1", "PALS_RANKID": "9"},
                         num_gpus=8)
    assert (pals.launcher, pals.rank, pals.local_rank, pals.device) == ("mpirun", 9, 1, "cuda:1")
    bare = detect_launch({"PMI_RANK": "0", "PMI_SIZE": "2"}, num_gpus=0)
    assert (bare.local_rank, bare.device) == (None, None)  # init_distributed asks MPI which ranks share a node


@pytest.mark.parametrize("env, message", [
    ({**TORCHRUN, "RANK": "five"}, "RANK='five' is not an integer"),
    ({**TORCHRUN, "RANK": "8"}, "rank 8 of world size 8"),
    ({k: v for k, v in TORCHRUN.items() if k != "LOCAL_RANK"}, "LOCAL_RANK not set"),
    ({k: v for k, v in TORCHRUN.items() if k != "MASTER_ADDR"}, "MASTER_ADDR not set"),
    ({**SRUN, "SLURM_LOCALID": "8"}, "local rank 8 of 8"),
    ({**SRUN, "SLURM_STEP_NODELIST": "frontier[0001-"}, "unclosed"),
    ({**SRUN, "SLURM_TASKS_PER_NODE": "eight"}, "bad tasks-per-node 'eight'"),
    ({**SRUN, "SLURM_NODEID": "4"}, "SLURM_NODEID=4"),
    ({k: v for k, v in SRUN.items() if "NODELIST" not in k}, "SLURM_NODELIST"),
    ({k: v for k, v in SRUN.items() if k != "SLURM_JOB_ID"}, "MASTER_PORT nor SLURM_JOB_ID"),
    ({**OPENMPI, "OMPI_COMM_WORLD_SIZE": "0"}, "world size 0"),
    ({"PMI_RANK": "0"}, "PMI_SIZE not set"),
])
def test_bad_environments_say_what_is_wrong(env, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        detect_launch(env, num_gpus=0)


def test_pick_device_refuses_more_local_ranks_than_gpus():
    assert pick_device(3, 4, 0) == "cpu"
    assert pick_device(3, 4, 4) == "cuda:3"
    with pytest.raises(ValueError, match="local rank 5 of 8 .* only 4 are visible"):
        pick_device(5, 8, 4)
