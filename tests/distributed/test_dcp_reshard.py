"""Distributed checkpoints across layouts: save on 4 ranks (HSDP 2 x 2) after 2 AdamW steps, resume
on 2 ranks (dp_shard=2), in one process, and in one process holding two pipeline stages under one
optimizer: the next two steps' losses equal the uninterrupted run's (the second one depends on the
restored AdamW moments). An interrupted save leaves nothing that looks complete; the single-file
export loads into a plain OrbitViT, and fine-tuning initializes from it."""
import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from orbit.parallel import checkpoint
from orbit.parallel.checkpoint import export_single_file, is_complete, load_distributed, save_distributed
from orbit.parallel.mesh import ParallelDims
from orbit.models.orbit_vit_parallel import ORBIT_VIT_PLAN, OrbitStage
from orbit.parallel.pipeline import stage_block_ranges
from orbit.parallel.sharding import apply_fsdp
from orbit.parallel.spawn import spawn
from orbit.train.finetune import load_pretrained
from tiny_training import adamw, global_batch, rel_err, tiny_model, train_steps

SAVED_AT = 2  # optimizer steps before the save
RESUMED = range(SAVED_AT, SAVED_AT + 2)  # the steps run after resuming
# Reached here: resumed losses equal the uninterrupted ones to ~1e-7 relative (reduction order differs
# between layouts); resuming without the optimizer state would miss the second loss by ~7e-3.
LOSS_RTOL = 1e-5


def _fsdp_model(dims: ParallelDims):
    mesh = dims.build_mesh("cpu")
    model = tiny_model()
    apply_fsdp([model], mesh, dims, ORBIT_VIT_PLAN)
    return model, adamw(model), mesh["dp"].get_local_rank()


def _mean_over_data_ranks(losses: list[float]) -> torch.Tensor:
    losses = torch.tensor(losses)
    dist.all_reduce(losses, op=dist.ReduceOp.AVG)  # every rank is a data rank in these layouts
    return losses


def _save_on_hsdp(rank, world_size, path):
    dims = ParallelDims(world_size=world_size, dp_replicate=2, dp_shard=2)
    model, optimizer, dp_rank = _fsdp_model(dims)
    train_steps(model, optimizer, range(SAVED_AT), dp_rank, dims.dp)
    save_distributed(path, [model], optimizer, {"step": SAVED_AT, "note": "replicated"})
    saved = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    losses = _mean_over_data_ranks(train_steps(model, optimizer, RESUMED, dp_rank, dims.dp))
    return {"saved": saved, "losses": losses}


def _resume_on_dp_shard(rank, world_size, path):
    dims = ParallelDims(world_size=world_size, dp_shard=world_size)
    model, optimizer, dp_rank = _fsdp_model(dims)
    extra = load_distributed(path, [model], optimizer)
    steps = range(extra["step"], extra["step"] + len(RESUMED))
    return {"extra": extra, "losses": _mean_over_data_ranks(train_steps(model, optimizer, steps, dp_rank, dims.dp))}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("dcp") / "step_2"
    run = spawn(_save_on_hsdp, 4, str(path))[0]
    return {"path": path, **run}


def test_resume_on_two_ranks(saved):
    runs = spawn(_resume_on_dp_shard, 2, str(saved["path"]))
    assert runs[0]["extra"] == {"step": SAVED_AT, "note": "replicated"}
    assert rel_err(runs[0]["losses"], saved["losses"]) <= LOSS_RTOL


def test_resume_in_one_process(saved):
    model = tiny_model()
    optimizer = adamw(model)
    extra = load_distributed(saved["path"], [model], optimizer)
    assert all(torch.equal(p, saved["saved"][n]) for n, p in model.state_dict().items())
    assert rel_err(torch.tensor(train_steps(model, optimizer, RESUMED)), saved["losses"]) <= LOSS_RTOL
    assert extra["step"] == SAVED_AT


def test_resume_into_pipeline_stages_sharing_one_optimizer(saved):
    """Both stages on one rank (as with interleaved schedules): each holds a `blocks` dict keyed by the
    full model's block indices, so the keys of both parts must be told apart and mapped back."""
    model = tiny_model()
    stages = [OrbitStage(model, s, 2, blocks) for s, blocks in enumerate(stage_block_ranges(len(model.blocks), 2))]
    optimizer = torch.optim.AdamW([p for stage in stages for p in stage.parameters()], lr=1e-2, weight_decay=0.05,
                                  foreach=False)
    load_distributed(saved["path"], stages, optimizer)
    assert all(torch.equal(p, saved["saved"][n]) for n, p in model.state_dict().items())
    # the stages share the model's modules, so the model runs the loaded stage parameters
    assert rel_err(torch.tensor(train_steps(model, optimizer, RESUMED)), saved["losses"]) <= LOSS_RTOL


def test_export_single_file_loads_into_a_plain_model(saved, tmp_path):
    out = export_single_file(saved["path"], tmp_path / "orbit.pt")
    state = torch.load(out, weights_only=True)
    assert state.keys() == saved["saved"].keys()
    assert all(torch.equal(state[n], saved["saved"][n]) for n in state)
    plain, reference = tiny_model(), tiny_model()
    plain.load_state_dict(state)  # strict: exactly the plain model's keys
    reference.load_state_dict(saved["saved"])
    inputs, _ = global_batch(0)
    assert torch.equal(plain(*inputs), reference(*inputs))


def test_interrupted_save_leaves_no_complete_looking_checkpoint(tmp_path, monkeypatch):
    model = tiny_model()
    optimizer = adamw(model)
    train_steps(model, optimizer, range(1))
    path = tmp_path / "step_1"
    save_distributed(path, [model], optimizer, {"step": 1})
    before = {n: p.clone() for n, p in model.state_dict().items()}
    train_steps(model, optimizer, range(1, 2))

    def killed(tmp, final):
        raise KeyboardInterrupt("killed after the shards were written, before the rename")

    monkeypatch.setattr(checkpoint, "publish_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        save_distributed(path, [model], optimizer, {"step": 2})  # re-save under the same name
    with pytest.raises(KeyboardInterrupt):
        save_distributed(tmp_path / "step_2", [model], optimizer, {"step": 2})
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers[:2] == ["step_1", "step_1.tmp-" + leftovers[1].split("tmp-")[1]]
    assert leftovers[2].startswith("step_2.tmp-") and len(leftovers) == 3  # no "step_2"
    assert all(is_complete(tmp_path / name) for name in leftovers)  # shards were written, just never published
    with pytest.raises(FileNotFoundError, match="not a complete distributed checkpoint"):
        load_distributed(tmp_path / "step_2", [model], optimizer)
    fresh = tiny_model()
    assert load_distributed(path, [fresh], adamw(fresh)) == {"step": 1}  # the older checkpoint is intact
    assert all(torch.equal(p, before[n]) for n, p in fresh.state_dict().items())


def test_finetuning_starts_from_a_checkpoint_saved_on_four_ranks(saved):
    """`finetune.init`: an HSDP-saved checkpoint initializes a plain model whose head is replaced."""
    model = tiny_model()
    torch.nn.init.zeros_(model.head.weight)
    report = load_pretrained(model, saved["path"], replace=["head"])
    assert report["replaced"] == ["head.weight", "head.bias"]
    assert not model.head.weight.any()
    assert all(torch.equal(p, saved["saved"][n]) for n, p in model.state_dict().items() if not n.startswith("head."))
