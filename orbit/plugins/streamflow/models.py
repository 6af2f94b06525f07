r"""The streamflow model families. Every one maps the same inputs to the next `horizon` days' flow:

    forward(x_past (B, T, D), x_future (B, H, D), q_past (B, T, 1), static (B, S)) -> (B, H)

(normalised units; see `windows.py` for what the inputs hold) and uses the parts its design uses.

- "lstm": one LSTM over the T + H days (past drivers then forecast drivers; a flow channel holds
  the observed past flow and zero over the forecast days), a linear head on the last H hidden
  states (Kratzert et al. 2019; with H = 1 and no past flow NeuralHydrology's `cudalstm`).
- "geo_lstm": the same with static catchment attributes: an embedding of them is concatenated to
  every step's input and sets the initial state (the "Geo" LSTM of the seed; cf. EA-LSTM).
- "lstm_ed": an encoder LSTM over the past (drivers, flow, static) whose final state starts a decoder
  LSTM over the forecast drivers (and static), one output per lead (sequence-to-sequence).
- "tst": the temporal sequence transformer: two transformer encoders for past and future drivers,
  a decoder over past flow (causal self-attention, cross-attention to the past-driver encoding),
  a cross-temporal fusion encoder over [past flow tokens; future driver tokens], and a final
  cross-attention of the fused future tokens to the fused past, one output per lead. Static
  attributes enter as an embedding added to every token. Every future token also gets the fused
  issue-day token (the state at t0), as LSTM-ED's decoder starts from its encoder's state at t0;
  without that path the lead-1 forecast must find the issue day by attention alone, and at 200 steps
  the TST reached validation NSE 0.48 against 0.67 with it (LSTM-ED 0.83; docs/streamflow.md).
  Pre-norm stacks end in a LayerNorm (as `nn.Transformer`'s), so attention reads normalised tokens.
  Positions: a fixed sinusoidal code of the day offset from the issue day (Vaswani et al. 2017, base
  1000) plus a learned table, so recency is there from the first step (validation loss 0.29 against
  0.33 with the learned table alone, at 200 steps).
- "rs_lstm": the Geo-LSTM with a grid-encoder path standing in for satellite inputs (Geo-RS-LSTM):
  each day's k x k patch of gridded fields around the basin (the last C k^2 driver columns, see
  toy_basins.py) is encoded by a small CNN and concatenated with the point drivers, flow channel
  and static embedding before the LSTM.
- "imv_lstm": IMV-LSTM (Guo, Lin & Antulov-Fantulin, ICML 2019, IMV-Full): one hidden state per
  input variable, temporal attention per variable and attention over variables (below).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from orbit.models.registry import register_family


@dataclass
class Sizes:
    """What the data fix: drivers D, static attributes S, history T, horizon H; `patch` k and
    `patch_channels` C: the last C k^2 of the D driver columns are a k x k patch of C gridded fields
    (0: none)."""

    drivers: int
    static: int
    seq_len: int
    horizon: int
    patch: int = 0
    patch_channels: int = 0


def _sequence(x_past: torch.Tensor, x_future: torch.Tensor, q_past: torch.Tensor) -> torch.Tensor:
    """(B, T + H, D + 1): drivers of past and forecast days, and a flow channel (zero ahead)."""
    flow = torch.cat([q_past, q_past.new_zeros(q_past.shape[0], x_future.shape[1], 1)], dim=1)
    return torch.cat([torch.cat([x_past, x_future], dim=1), flow], dim=-1)


class StreamflowLSTM(nn.Module):
    """Family "lstm" (module docstring)."""

    def __init__(self, sizes: Sizes, hidden: int = 64, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.sizes = sizes
        self.lstm = nn.LSTM(self._in_features(sizes), hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def _in_features(self, sizes: Sizes) -> int:
        return sizes.drivers + 1

    def encode(self, x_past, x_future, q_past, static) -> torch.Tensor:
        """Hidden states (B, T + H, hidden)."""
        return self.lstm(_sequence(x_past, x_future, q_past))[0]

    def forward(self, x_past, x_future, q_past, static) -> torch.Tensor:
        h = self.encode(x_past, x_future, q_past, static)[:, -self.sizes.horizon:]
        return self.head(self.dropout(h))[..., 0]


class GeoLSTM(StreamflowLSTM):
    """Family "geo_lstm": static attributes -> embedding e; input [drivers, flow, e] per step;
    (h0, c0) = tanh(linear(e))."""

    def __init__(self, sizes: Sizes, hidden: int = 64, layers: int = 1, dropout: float = 0.0, embed: int = 16):
        self.embed = embed
        super().__init__(sizes, hidden, layers, dropout)
        self.static_encoder = nn.Sequential(nn.Linear(sizes.static, embed), nn.Tanh())
        self.init_state = nn.Linear(embed, 2 * hidden * layers)

    def _in_features(self, sizes: Sizes) -> int:
        return sizes.drivers + 1 + self.embed

    def encode(self, x_past, x_future, q_past, static) -> torch.Tensor:
        e = self.static_encoder(static)
        seq = _sequence(x_past, x_future, q_past)
        seq = torch.cat([seq, e[:, None].expand(-1, seq.shape[1], -1)], dim=-1)
        layers, hidden = self.lstm.num_layers, self.lstm.hidden_size
        h0, c0 = torch.tanh(self.init_state(e)).view(-1, 2, layers, hidden).permute(1, 2, 0, 3).contiguous()
        return self.lstm(seq, (h0, c0))[0]


class RSLSTM(GeoLSTM):
    """Family "rs_lstm": per day, patch (C, k, k) -> conv 3x3 (C -> `channels`) -> ReLU -> flatten ->
    linear -> tanh -> `embed` features, concatenated with [point drivers, flow, static embedding];
    the LSTM and the initial state are the Geo-LSTM's. The CNN weights are shared over days."""

    def __init__(self, sizes: Sizes, hidden: int = 64, layers: int = 1, dropout: float = 0.0, embed: int = 16,
                 channels: int = 8):
        if sizes.patch < 1 or sizes.patch_channels < 1:
            raise ValueError(f"rs_lstm needs a gridded patch in its inputs (data.patch >= 1 with "
                             f"data.weather=toy_earth); got patch={sizes.patch}, patch_channels={sizes.patch_channels}")
        k, c = sizes.patch, sizes.patch_channels
        self.patch_width = c * k * k
        super().__init__(sizes, hidden, layers, dropout, embed)
        self.grid_encoder = nn.Sequential(nn.Unflatten(-1, (c, k, k)), nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(),
                                          nn.Flatten(), nn.Linear(channels * k * k, embed), nn.Tanh())

    def _in_features(self, sizes: Sizes) -> int:
        return sizes.drivers - self.patch_width + 1 + 2 * self.embed

    def encode(self, x_past, x_future, q_past, static) -> torch.Tensor:
        x = torch.cat([x_past, x_future], dim=1)
        b, length, _ = x.shape
        grid = self.grid_encoder(x[..., -self.patch_width:].reshape(b * length, -1)).view(b, length, -1)
        point_past, point_future = x_past[..., :-self.patch_width], x_future[..., :-self.patch_width]
        e = self.static_encoder(static)
        seq = _sequence(point_past, point_future, q_past)
        seq = torch.cat([seq, grid, e[:, None].expand(-1, length, -1)], dim=-1)
        layers, hidden = self.lstm.num_layers, self.lstm.hidden_size
        h0, c0 = torch.tanh(self.init_state(e)).view(-1, 2, layers, hidden).permute(1, 2, 0, 3).contiguous()
        return self.lstm(seq, (h0, c0))[0]


class LSTMEncoderDecoder(nn.Module):
    """Family "lstm_ed" (module docstring)."""

    def __init__(self, sizes: Sizes, hidden: int = 64, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        drop = dropout if layers > 1 else 0.0
        self.encoder = nn.LSTM(sizes.drivers + 1 + sizes.static, hidden, layers, batch_first=True, dropout=drop)
        self.decoder = nn.LSTM(sizes.drivers + sizes.static, hidden, layers, batch_first=True, dropout=drop)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x_past, x_future, q_past, static) -> torch.Tensor:
        s_past = static[:, None].expand(-1, x_past.shape[1], -1)
        s_future = static[:, None].expand(-1, x_future.shape[1], -1)
        _, state = self.encoder(torch.cat([x_past, q_past, s_past], dim=-1))
        h, _ = self.decoder(torch.cat([x_future, s_future], dim=-1), state)
        return self.head(self.dropout(h))[..., 0]


def _encoder(width: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)


def _sinusoid(offsets: torch.Tensor, width: int, base: float = 1000.0) -> torch.Tensor:
    """(len(offsets), width): sin / cos of offset * base^(-2i / width) in the even / odd columns."""
    angle = offsets[:, None].float() * base ** (-torch.arange(0, width, 2).float() / width)
    code = torch.zeros(len(offsets), width)
    code[:, 0::2], code[:, 1::2] = torch.sin(angle), torch.cos(angle[:, :width // 2])
    return code


class TemporalSequenceTransformer(nn.Module):
    """Family "tst" (module docstring). Tokens (B, L, width); positions: sinusoidal in the day offset
    from the issue day (-T+1 .. H) plus a learned table."""

    def __init__(self, sizes: Sizes, hidden: int = 64, layers: int = 1, dropout: float = 0.0, heads: int = 4):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"tst: hidden={hidden} must be a multiple of heads={heads}")
        t, h = sizes.seq_len, sizes.horizon
        self.past_embed, self.future_embed = nn.Linear(sizes.drivers, hidden), nn.Linear(sizes.drivers, hidden)
        self.flow_embed, self.static_embed = nn.Linear(1, hidden), nn.Linear(sizes.static, hidden)
        self.position = nn.Parameter(torch.randn(t + h, hidden) * 0.02)
        self.register_buffer("sinusoid", _sinusoid(torch.arange(-t + 1, h + 1), hidden), persistent=False)
        self.past_encoder = _encoder(hidden, heads, layers, dropout)
        self.future_encoder = _encoder(hidden, heads, layers, dropout)
        self.flow_decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True, norm_first=True), layers,
            norm=nn.LayerNorm(hidden))
        self.fusion = _encoder(hidden, heads, 1, dropout)
        self.cross = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, 1)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(t), persistent=False)
        self.issue_token = True  # off only in benchmarks/streamflow_tst_variants.py's ablation

    def forward_with_attention(self, x_past, x_future, q_past, static) -> tuple[torch.Tensor, torch.Tensor]:
        """(flow (B, H), cross-attention of each lead over the past days (B, H, T))."""
        t = x_past.shape[1]
        s = self.static_embed(static)[:, None]
        position = self.position + self.sinusoid
        past = self.past_encoder(self.past_embed(x_past) + position[:t] + s)
        future = self.future_encoder(self.future_embed(x_future) + position[t:] + s)
        flow = self.flow_decoder(self.flow_embed(q_past) + position[:t] + s, past, tgt_mask=self.causal,
                                 tgt_is_causal=True)
        fused = self.fusion(torch.cat([flow, future], dim=1))
        fused_past, fused_future = fused[:, :t], fused[:, t:]
        if self.issue_token:  # every lead also gets the issue day's state
            fused_future = fused_future + fused[:, t - 1:t]
        attended, weights = self.cross(fused_future, fused_past, fused_past, need_weights=True)
        return self.head(self.norm(fused_future + attended))[..., 0], weights

    def forward(self, x_past, x_future, q_past, static) -> torch.Tensor:
        return self.forward_with_attention(x_past, x_future, q_past, static)[0]


class IMVLSTM(nn.Module):
    r"""Family "imv_lstm": IMV-Tensor (Guo et al. 2019) over N = D + 1 variables (drivers and the flow
    channel of `_sequence`), hidden matrix h~_t (N, d) whose row n sees variable n only:

        [j~, i, f, o]_t = [tanh, sigmoid, sigmoid, sigmoid](W * h~_{t-1} + U * x_t + b)
                          (per variable: W (N, d, 4d), U (N, 4d): a tensor-dot, no mixing of variables)
        c_t = f c_{t-1} + i j~_t,   h~_t = o tanh(c_t)
        alpha^n_t = softmax_t(F^n(h^n_t) + p^n_t)  temporal attention, per variable
        g^n = sum_t alpha^n_t h^n_t
        beta^n = softmax_n(F_beta^n([g^n, h^n_L]))  variable attention
        y = sum_n beta^n mu^n,  mu^n = F_mu^n([g^n, h^n_L])  (H outputs per variable)

    so alpha (temporal) and beta (variable importance) are read off, not estimated afterwards. (IMV-Full,
    whose gates see every variable, lets a variable's row carry others' information, which blurs beta.)

    p^n_t, a learned bias per variable and day offset from the issue day, is our addition to the paper's
    content-only score F^n(h^n_t): a hidden state does not know how far back it lies, so without p the
    attention cannot single out "3 days before", the LSTM carries the value to h_L instead and alpha stays
    flat (measured: argmax off the planted lag, peak 0.1–0.3; with p the lag day gets ~0.7 on 3 seeds)."""

    def __init__(self, sizes: Sizes, hidden: int = 16, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if layers != 1:
            raise ValueError(f"imv_lstm has one recurrent layer by construction, got layers={layers}")
        n, d = sizes.drivers + 1, hidden
        self.n, self.d, self.horizon = n, d, sizes.horizon
        self.w = nn.Parameter(torch.randn(n, d, 4 * d) / d ** 0.5)
        self.u = nn.Parameter(torch.randn(n, 4 * d))
        self.b = nn.Parameter(torch.zeros(n, 4 * d))
        self.f_alpha = nn.Parameter(torch.randn(n, d) / d ** 0.5)
        self.offset_bias = nn.Parameter(torch.zeros(n, sizes.seq_len + sizes.horizon))  # p^n_t
        self.f_beta = nn.Parameter(torch.randn(n, 2 * d) / d ** 0.5)
        self.f_mu = nn.Parameter(torch.randn(n, 2 * d, sizes.horizon) / d ** 0.5)
        self.b_mu = nn.Parameter(torch.zeros(n, sizes.horizon))
        self.dropout = nn.Dropout(dropout)

    def forward_with_attention(self, x_past, x_future, q_past, static):
        """(flow (B, H), alpha (B, N, L) temporal attention per variable, beta (B, N) over variables)."""
        x = _sequence(x_past, x_future, q_past)
        b, length, n = x.shape
        h = x.new_zeros(b, n, self.d)
        c = x.new_zeros(b, n, self.d)
        states = []
        for t in range(length):
            z = torch.einsum("bnd,nde->bne", h, self.w) + x[:, t, :, None] * self.u + self.b
            j, i, f, o = z.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(j)
            h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        hs = torch.stack(states, dim=2)                                          # (B, N, L, d)
        alpha = torch.softmax(torch.einsum("bnld,nd->bnl", hs, self.f_alpha) + self.offset_bias, dim=-1)
        g = torch.einsum("bnl,bnld->bnd", alpha, hs)
        summary = self.dropout(torch.cat([g, h], dim=-1))                      # (B, N, 2d)
        beta = torch.softmax(torch.einsum("bnk,nk->bn", summary, self.f_beta), dim=-1)
        mu = torch.einsum("bnk,nkh->bnh", summary, self.f_mu) + self.b_mu
        return torch.einsum("bn,bnh->bh", beta, mu), alpha, beta

    def forward(self, x_past, x_future, q_past, static) -> torch.Tensor:
        return self.forward_with_attention(x_past, x_future, q_past, static)[0]


FAMILIES = {"lstm": StreamflowLSTM, "geo_lstm": GeoLSTM, "lstm_ed": LSTMEncoderDecoder,
            "tst": TemporalSequenceTransformer, "imv_lstm": IMVLSTM}
GRID_FAMILIES = {"rs_lstm": RSLSTM}  # families that need a gridded patch in their inputs (Sizes.patch >= 1)
ALL_FAMILIES = {**FAMILIES, **GRID_FAMILIES}


def example_inputs(sizes: Sizes, batch: int = 3) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, sizes.seq_len, sizes.drivers), torch.randn(batch, sizes.horizon, sizes.drivers),
            torch.randn(batch, sizes.seq_len, 1), torch.randn(batch, sizes.static))


def _example(cls: type[nn.Module]):
    sizes = Sizes(drivers=3 + 2 * 9, static=2, seq_len=6, horizon=2, patch=3, patch_channels=2) if cls is RSLSTM \
        else Sizes(drivers=3, static=2, seq_len=6, horizon=2)
    return lambda: (cls(sizes, hidden=8), example_inputs(sizes))


for _name, _cls in ALL_FAMILIES.items():
    register_family(_name, _cls, example=_example(_cls))
