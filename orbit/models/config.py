"""`OrbitConfig`: the typed signature of an ORBIT model (architecture only)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class OrbitConfig:
    """Architecture of an `OrbitViT`.

    `variables` is the channel vocabulary: every name owns a patch embedding and a variable
    embedding, and a batch may feed any subset of it in any order (see `OrbitViT.forward`).
    `out_variables` are the channels the head predicts (a subset of the vocabulary, so a
    prediction can be fed back as input). Lists (e.g. from YAML) are stored as tuples.
    """

    variables: tuple[str, ...]
    img_size: tuple[int, int]
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    out_variables: tuple[str, ...] | None = None
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    fused_frontend: bool = True
    drop_path: float = 0.0
    agg_heads: int | None = None
    lead_time_scale: float = 1.0
    lead_time_freq_dim: int = 256
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        set_ = lambda key, value: object.__setattr__(self, key, value)  # noqa: E731  (frozen)
        set_("variables", tuple(self.variables))
        set_("img_size", tuple(self.img_size))
        set_("out_variables", self.variables if self.out_variables is None else tuple(self.out_variables))
        set_("agg_heads", self.num_heads if self.agg_heads is None else self.agg_heads)
        self._validate()

    def _validate(self) -> None:
        if not self.variables:
            raise ValueError("OrbitConfig.variables is empty; give at least one variable name")
        for key in ("variables", "out_variables"):
            names = getattr(self, key)
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"OrbitConfig.{key} has duplicate names {dupes}; each name must appear once")
        unknown = [n for n in self.out_variables if n not in self.variables]
        if unknown:
            raise ValueError(
                f"OrbitConfig.out_variables {unknown} are not in variables; valid names: {list(self.variables)}"
            )
        if len(self.img_size) != 2 or min(self.img_size) < 1:
            raise ValueError(f"OrbitConfig.img_size must be (H, W) with positive sizes, got {self.img_size}")
        for key in ("patch_size", "embed_dim", "depth", "num_heads", "agg_heads", "lead_time_freq_dim"):
            if getattr(self, key) < 1:
                raise ValueError(f"OrbitConfig.{key} must be >= 1, got {getattr(self, key)}")
        bad = [s for s in self.img_size if s % self.patch_size]
        if bad:
            raise ValueError(
                f"OrbitConfig.img_size {self.img_size} is not divisible by patch_size {self.patch_size}; "
                "choose a patch size that divides both H and W"
            )
        for key in ("num_heads", "agg_heads"):
            if self.embed_dim % getattr(self, key):
                raise ValueError(
                    f"OrbitConfig.embed_dim {self.embed_dim} is not divisible by {key} {getattr(self, key)}"
                )
        if self.embed_dim % 4:
            raise ValueError(
                f"OrbitConfig.embed_dim must be a multiple of 4 (2-D sin-cos positions), got {self.embed_dim}"
            )
        if self.lead_time_freq_dim % 2:
            raise ValueError(f"OrbitConfig.lead_time_freq_dim must be even, got {self.lead_time_freq_dim}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"OrbitConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"OrbitConfig.drop_path must be in [0, 1), got {self.drop_path}")
        if self.lead_time_scale <= 0:
            raise ValueError(f"OrbitConfig.lead_time_scale must be > 0 hours, got {self.lead_time_scale}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (H / p, W / p)."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def indices_of(self, names) -> tuple[int, ...]:
        """Vocabulary indices of `names` (e.g. to build `var_ids`); unknown names raise ValueError."""
        unknown = [n for n in names if n not in self.variables]
        if unknown:
            raise ValueError(f"unknown variables {unknown}; the vocabulary is {list(self.variables)}")
        return tuple(self.variables.index(n) for n in names)
