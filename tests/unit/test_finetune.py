"""Starting from a pretrained checkpoint: what loads, what is replaced, what is frozen."""
import pytest
import torch

from orbit.config import FinetuneConfig
from orbit.models.registry import create_model
from orbit.parallel.checkpoint import save_distributed
from orbit.train.finetune import freeze, load_pretrained, prepare_model

VARIABLES = ("t2m", "z500")


def _model(out_variables=VARIABLES, seed=0):
    torch.manual_seed(seed)
    return create_model("tiny", variables=VARIABLES, out_variables=out_variables, img_size=(8, 16), embed_dim=32,
                        depth=2, num_heads=2)


@pytest.fixture
def pretrained_dir(tmp_path):
    model = _model(seed=1)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_distributed(tmp_path / "step_00000001", [model], optimizer, {"step": 1}), model


def test_loads_every_matching_tensor_from_a_distributed_checkpoint(pretrained_dir):
    path, source = pretrained_dir
    model = _model(seed=2)
    report = load_pretrained(model, path, replace=[])
    assert not report["replaced"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name


def test_replaced_parts_keep_their_fresh_weights(pretrained_dir, tmp_path):
    path, source = pretrained_dir
    model = _model(out_variables=("t2m",), seed=2)  # a new head: another output size
    fresh_head = model.head.weight.clone()
    with pytest.raises(ValueError, match=r"head.weight \(shape .*finetune.replace"):
        load_pretrained(model, path, replace=[])
    load_pretrained(model, path, replace=["head"])
    assert torch.equal(model.head.weight, fresh_head)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    exported = tmp_path / "model.pt"  # a single-file export loads the same way
    torch.save(source.state_dict(), exported)
    other = _model(out_variables=("t2m",), seed=3)
    load_pretrained(other, exported, replace=["head"])
    assert torch.equal(other.blocks[0].attn.q_proj.weight, source.blocks[0].attn.q_proj.weight)


def test_missing_or_incomplete_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(_model(), tmp_path / "nope", replace=[])
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_pretrained(_model(), tmp_path / "half", replace=[])


@pytest.mark.parametrize("policy, trainable", [
    ("none", {"patch_embed", "var_embed", "aggregation", "lead_embed", "blocks", "norm", "head"}),
    ("backbone", {"patch_embed", "var_embed", "aggregation", "lead_embed", "norm", "head"}),
    ("all_but_head", {"norm", "head"}),
])
def test_freeze_policies(policy, trainable):
    model = _model()
    freeze(model, policy)
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == trainable


def test_prepare_model_refuses_to_freeze_random_weights():
    with pytest.raises(ValueError, match="without finetune.init"):
        prepare_model(_model(), FinetuneConfig(freeze="backbone"))
    model = prepare_model(_model(), FinetuneConfig(replace=["head"]))  # from scratch: nothing to load
    assert all(p.requires_grad for p in model.parameters())
