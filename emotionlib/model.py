"""The unified CNN-RNN of Zhu et al. (IJCAI 2017), Sec. 3 and Fig. 2.

Trunk (four conv stages) -> branches tapped after each pooling layer (1x1 conv, 128 -> FC -> FC_i) ->
main branch (concat[FC_1..FC_4, FC] -> FC_5) -> fusion over the sequence V_1..V_5 (Bi-GRU by default, Eq. 6-10).
Choices the paper leaves open are marked "(ours)" and listed in the README's table of deviations; the
reconstruction, and the reasoning behind each choice, is docs/architecture.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

# ----------------------------------------------------------------------------- variants (Table 1)

FUSIONS = ("softmax", "ensemble", "lstm", "bilstm", "gru", "bigru", "max", "avg")
RNN_FUSIONS = ("lstm", "bilstm", "gru", "bigru")

#: name -> (fusion, number of branches incl. the main one, what it is). Table 1's rows, plus the max/avg
#: aggregation of Rao et al. (2016b) that Sec. 1 contrasts with.
VARIANTS: dict[str, tuple[str, int, str]] = {
    "softmax": ("softmax", 0, "CNN + without branch + softmax: trunk and main FC only, trained end to end"),
    "ensemble": ("ensemble", 5, "CNN + 5 branches + ensemble: average of the five branch classifiers' scores"),
    "lstm": ("lstm", 5, "CNN + 5 branches + LSTM: a unidirectional LSTM over V_1..V_5"),
    "bilstm": ("bilstm", 5, "CNN + 5 branches + Bi-LSTM"),
    "gru": ("gru", 5, "CNN + 5 branches + GRU: a unidirectional GRU over V_1..V_5"),
    "bigru": ("bigru", 5, "CNN + 5 branches + Bi-GRU: the paper's model (Eq. 6-11)"),
    "bigru4": ("bigru", 4, "CNN + 4 branches + Bi-GRU: branches 1-3 and the main branch (drops branch 4)"),
    "bigru5": ("bigru", 5, "CNN + 5 branches + Bi-GRU (same as bigru)"),
    "bigru6": ("bigru", 6, "CNN + 6 branches + Bi-GRU: one more tap before pool1 (ours: the paper does not say where)"),
    "max": ("max", 5, "CNN + 5 branches + element-wise max over V_1..V_5 (Rao et al. 2016b style aggregation)"),
    "avg": ("avg", 5, "CNN + 5 branches + element-wise mean over V_1..V_5 (Rao et al. 2016b style aggregation)"),
}


def parse_variant(name: str) -> tuple[str, int]:
    """`bigru` -> ("bigru", 5); `gru6` -> ("gru", 6); any fusion may carry a branch count 4, 5 or 6."""
    if name in VARIANTS:
        fusion, n, _ = VARIANTS[name]
        return fusion, n
    m = re.fullmatch(r"([a-z]+)([456])", name)
    if m and m.group(1) in FUSIONS and m.group(1) != "softmax":
        return m.group(1), int(m.group(2))
    raise ConfigError(f"unknown variant {name!r}; run `emotionlib variants` for the list (e.g. {', '.join(VARIANTS)})")


# ----------------------------------------------------------------------------- configuration


@dataclass
class ModelConfig:
    """Architecture hyper-parameters; defaults are the paper's (Fig. 2, Sec. 3.1, 4.1) at width 1."""

    num_classes: int = 8
    variant: str = "bigru"
    channels: tuple[int, int, int, int] = (128, 256, 384, 512)  # Fig. 2: the four trunk stages
    width: float = 1.0  # channel multiplier, so a CPU profile keeps the geometry with fewer channels
    conv1_kernel: int = 11  # Fig. 2: 11x11
    conv1_stride: int = 4  # (ours) from a related Caffe config of the first author
    conv1_padding: int = 0
    conv_kernel: int = 5  # Fig. 2: 5x5 in stages 2-4, padding 2
    batch_norm: bool = True  # (ours) the paper names no normalisation; BN makes from-scratch SGD train reliably
    branch_channels: int = 128  # Sec. 3.1: "1x1 convolution layer with 128 filters"
    branch_pool: int = 4  # (ours) adaptive average pool to 4x4 in each branch, before the FC
    branch_order: str = "conv-pool"  # (ours) 1x1 conv on the full map, then the pool; "pool-conv": GoogLeNet's order
    branch_fc: int = 1024  # Sec. 4.1: FC layers of 1,024, 512 and 512 neurons: FC, FC_i, FC_5
    branch_feature: int = 512  # FC_i
    main_fc: int = 1024  # FC of the main branch
    fused_feature: int = 512  # FC_5
    branch_dropout: float = 0.5  # (ours) after FC, as in GoogLeNet's auxiliary classifiers
    rnn_hidden: int = 512  # Sec. 4.1: "The Bi-GRU has 512 hidden units"
    dropout: float = 0.5  # Sec. 4.1: dropout on the Bi-GRU output; the rate is ours
    # (ours: off) Sec. 4.1's three FC layers "of 1,024, 512 and 512 neurons" read as FC, FC_i and FC_5, so the FC
    # after H is the classifier itself; True reads the third as an FC of 512 (fused_feature) between H and the
    # classifier (docs/architecture.md)
    top_fc: bool = False
    rnn_cell: str = "paper"  # "paper": Eq. 6-9 written out; "torch": nn.GRU (reset gate after the product)

    @property
    def fusion(self) -> str:
        return parse_variant(self.variant)[0]

    @property
    def n_branches(self) -> int:
        return parse_variant(self.variant)[1]

    @property
    def taps(self) -> tuple[str, ...]:
        """Where the side branches tap the trunk. 5 branches = pool1..pool4 + main (Fig. 2);
        4 = pool1..pool3 + main; 6 = conv1 (stage 1 before pooling, ours) + pool1..pool4 + main."""
        return {
            0: (),
            4: ("pool1", "pool2", "pool3"),
            5: ("pool1", "pool2", "pool3", "pool4"),
            6: ("conv1", "pool1", "pool2", "pool3", "pool4"),
        }[self.n_branches]

    def stage_channels(self) -> list[int]:
        return [max(8, int(round(c * self.width))) for c in self.channels]

    def validate(self) -> "ModelConfig":
        parse_variant(self.variant)
        if not self.width > 0:  # stage_channels would clamp 0 or -1 to 8 channels and train something else unseen
            raise ConfigError(f"model.width={self.width}: give a positive channel multiplier")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes={self.num_classes}: need at least two classes")
        if self.branch_order not in ("conv-pool", "pool-conv"):
            raise ConfigError(f"branch_order={self.branch_order!r}: use 'conv-pool' or 'pool-conv'")
        if self.rnn_cell not in ("paper", "torch"):
            raise ConfigError(f"rnn_cell={self.rnn_cell!r}: use 'paper' or 'torch'")
        if not isinstance(self.top_fc, bool):
            raise ConfigError(f"model.top_fc={self.top_fc!r}: use true or false")
        if not 0 <= self.dropout < 1 or not 0 <= self.branch_dropout < 1:
            raise ConfigError("dropout rates must lie in [0, 1)")
        return self


def _branch_key(tap: str) -> str:
    return "branch0" if tap == "conv1" else "branch" + tap[-1]


# ----------------------------------------------------------------------------- CNN


def _conv(cin: int, cout: int, k: int, stride: int, pad: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, pad, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class TrunkStage(nn.Module):
    """conv kxk -> conv 1x1 -> max-pool 3x3 stride 2 (Fig. 2). Returns the map before and after pooling."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int, bn: bool):
        super().__init__()
        self.convs = nn.Sequential(*_conv(cin, cout, k, stride, pad, bn), *_conv(cout, cout, 1, 1, 0, bn))
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = self.convs(x)
        return pre, self.pool(pre)


class Trunk(nn.Module):
    """The four-stage main architecture of the CNN (the table of Fig. 4, reconstructed)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        ch = cfg.stage_channels()
        k = cfg.conv_kernel
        self.stages = nn.ModuleList(
            [TrunkStage(3, ch[0], cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding, cfg.batch_norm)]
        )
        for cin, cout in zip(ch[:-1], ch[1:]):
            self.stages.append(TrunkStage(cin, cout, k, 1, k // 2, cfg.batch_norm))

    def forward(self, x: torch.Tensor, depth: int = 4) -> dict[str, torch.Tensor]:
        """Run the first `depth` stages; return every tap point: conv1 (pre-pool), pool1..pool<depth>."""
        out = {}
        for i, stage in enumerate(self.stages[:depth]):
            pre, x = stage(x)
            if i == 0:
                out["conv1"] = pre
            out[f"pool{i + 1}"] = x
        return out


def tap_stage(tap: str) -> int:
    """0-based trunk stage a tap point belongs to."""
    return 0 if tap == "conv1" else int(tap[-1]) - 1


def _reduce(cin: int, cfg: ModelConfig) -> nn.Sequential:
    """The branch's 1x1 convolution (128 filters, Sec. 3.1) and an adaptive average pool that bounds the FC's input.
    "conv-pool" (default) applies the 1x1 conv and its ReLU on the full map, so the pool averages non-linear local
    features (a bag of features: what tells stripes from dots); "pool-conv" pools first, GoogLeNet's auxiliary
    classifier order, which leaves the 1x1 conv a linear map of regional means."""
    p, c = cfg.branch_pool, cfg.branch_channels
    conv = [nn.Conv2d(cin, c, 1), nn.ReLU(inplace=True)]
    if cfg.branch_order == "conv-pool":
        return nn.Sequential(*conv, nn.AdaptiveAvgPool2d(p))
    return nn.Sequential(nn.AdaptiveAvgPool2d(p), *conv)


class Branch(nn.Module):
    """A side branch (Sec. 3.1): "inserting 1x1 convolution layer and fully connected layer" after a pooling layer,
    motivated by GoogLeNet's auxiliary classifiers. Output V = FC_i, with its own softmax classifier (Eq. 1)."""

    def __init__(self, cin: int, cfg: ModelConfig):
        super().__init__()
        p, c = cfg.branch_pool, cfg.branch_channels
        self.reduce = _reduce(cin, cfg)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(c * p * p, cfg.branch_fc), nn.ReLU(inplace=True), nn.Dropout(cfg.branch_dropout)
        )
        self.fc_i = nn.Sequential(nn.Linear(cfg.branch_fc, cfg.branch_feature), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(cfg.branch_feature, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_i(self.fc(self.reduce(x)))


class MainBranch(nn.Module):
    """The main branch (Fig. 2): 1x1 conv (128) on pool4 -> FC (1024); then FC_5 over concat[FC_1..FC_k, FC]
    ("the main branch integrates features from different layers"). Without side branches it is FC -> softmax.

    Dropout follows FC, as in the side branches. With side branches it sits between FC and FC_5; without them V
    is FC itself, so the dropout moves to the classifier's input (`logits`): the contrastive distances of Eq. 3-4
    are taken before dropout, as for FC_i and FC_5."""

    def __init__(self, cin: int, n_side: int, cfg: ModelConfig):
        super().__init__()
        p, c = cfg.branch_pool, cfg.branch_channels
        self.reduce = _reduce(cin, cfg)
        drop = nn.Dropout(cfg.branch_dropout)
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(c * p * p, cfg.main_fc), nn.ReLU(inplace=True), *([drop] if n_side else [])
        )
        if n_side:
            self.fc_5 = nn.Sequential(
                nn.Linear(n_side * cfg.branch_feature + cfg.main_fc, cfg.fused_feature), nn.ReLU(inplace=True)
            )
            out = cfg.fused_feature
        else:
            self.fc_5 = nn.Identity()
            out = cfg.main_fc
        self.drop = nn.Identity() if n_side else drop
        self.classifier = nn.Linear(out, cfg.num_classes)

    def forward(self, pool4: torch.Tensor, side: list[torch.Tensor]) -> torch.Tensor:
        fc = self.fc(self.reduce(pool4))
        return self.fc_5(torch.cat([*side, fc], dim=1)) if side else fc

    def logits(self, v: torch.Tensor) -> torch.Tensor:
        """The main classifier (Eq. 1) on V (after dropout when V is FC itself)."""
        return self.classifier(self.drop(v))


# ----------------------------------------------------------------------------- recurrent fusion (Sec. 3.3)


class PaperGRUCell(nn.Module):
    """The GRU of Eq. 6-9, written from the equations:

        r_t = sigma(W_vr V_t + W_hr h_{t-1} + b_r)                  (6)
        z_t = sigma(W_vz V_t + W_hz h_{t-1} + b_z)                  (7)
        h~_t = tanh(W_vh V_t + W_hh (r_t * h_{t-1}) + b_h)           (8)
        h_t = z_t * h_{t-1} + (1 - z_t) * h~_t                        (9)

    The reset gate acts *inside* the recurrent product (Cho et al. 2014). PyTorch's nn.GRU (cuDNN) instead
    computes r_t * (W_hn h_{t-1} + b_hn). Eq. 8 as printed puts b_h inside the bracket; we read it as a plain bias.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.W_v = nn.Linear(input_size, 3 * hidden_size)  # [W_vr; W_vz; W_vh] and the biases b_r, b_z, b_h
        self.W_hr = nn.Linear(hidden_size, hidden_size, bias=False)
        self.W_hz = nn.Linear(hidden_size, hidden_size, bias=False)
        self.W_hh = nn.Linear(hidden_size, hidden_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.GRU's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        vr, vz, vh = self.W_v(v).chunk(3, dim=1)
        r = torch.sigmoid(vr + self.W_hr(h))  # Eq. 6
        z = torch.sigmoid(vz + self.W_hz(h))  # Eq. 7
        h_tilde = torch.tanh(vh + self.W_hh(r * h))  # Eq. 8
        return z * h + (1 - z) * h_tilde  # Eq. 9

    def weight_matrices(self) -> list[torch.Tensor]:
        return [self.W_v.weight, self.W_hr.weight, self.W_hz.weight, self.W_hh.weight]


class PaperGRU(nn.Module):
    """A (bi)directional GRU of PaperGRUCell over a short sequence; returns the final hidden state(s)."""

    def __init__(self, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__()
        self.fwd = PaperGRUCell(input_size, hidden_size)
        self.bwd = PaperGRUCell(input_size, hidden_size) if bidirectional else None

    @staticmethod
    def _run(cell: PaperGRUCell, seq: torch.Tensor) -> torch.Tensor:
        h = seq.new_zeros(seq.shape[0], cell.hidden_size)
        for t in range(seq.shape[1]):
            h = cell(seq[:, t], h)
        return h

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h = [self._run(self.fwd, seq)]  # reads V_1 -> V_T (local to global)
        if self.bwd is not None:
            h.append(self._run(self.bwd, seq.flip(1)))  # reads V_T -> V_1 (global to local)
        return torch.cat(h, dim=1)  # Eq. 10: H = [h_fwd_T, h_bwd_T]

    def weight_matrices(self) -> list[torch.Tensor]:
        return [w for c in (self.fwd, self.bwd) if c is not None for w in c.weight_matrices()]


class TorchRNN(nn.Module):
    """nn.GRU / nn.LSTM (cuDNN on a GPU), returning the same H = [h_fwd_T, h_bwd_T] as PaperGRU."""

    def __init__(self, kind: str, input_size: int, hidden_size: int, bidirectional: bool):
        super().__init__()
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = cls(input_size, hidden_size, batch_first=True, bidirectional=bidirectional)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(seq)
        if isinstance(h, tuple):  # LSTM returns (h_n, c_n)
            h = h[0]
        return torch.cat(list(h), dim=1)  # h_n is (directions, B, H): forward's last step, backward's last step

    def weight_matrices(self) -> list[torch.Tensor]:
        return [p for n, p in self.rnn.named_parameters() if n.startswith("weight")]


def _top_fc(width: int, cfg: ModelConfig) -> tuple[nn.Module, int]:
    """model.top_fc: an FC of fused_feature units (512) and its ReLU between the fused feature and the classifier,
    or nothing (the default reading); returns it and the classifier's input width."""
    if not cfg.top_fc:
        return nn.Identity(), width
    return nn.Sequential(nn.Linear(width, cfg.fused_feature), nn.ReLU(inplace=True)), cfg.fused_feature


class RNNFusion(nn.Module):
    """Sec. 3.3: a recurrent net over V_1..V_T (low to high level), H -> dropout -> FC -> softmax (Eq. 10); with
    model.top_fc, H -> dropout -> FC 512 -> ReLU -> FC -> softmax."""

    def __init__(self, kind: str, input_size: int, cfg: ModelConfig):
        super().__init__()
        bidirectional = kind.startswith("bi")
        base = kind[2:] if bidirectional else kind
        if base == "gru" and cfg.rnn_cell == "paper":
            self.rnn: nn.Module = PaperGRU(input_size, cfg.rnn_hidden, bidirectional)
        else:
            self.rnn = TorchRNN(base, input_size, cfg.rnn_hidden, bidirectional)
        self.dropout = nn.Dropout(cfg.dropout)
        self.top, width = _top_fc(cfg.rnn_hidden * (2 if bidirectional else 1), cfg)
        self.fc = nn.Linear(width, cfg.num_classes)

    def features(self, seq: torch.Tensor) -> torch.Tensor:
        """The input of the classifier `fc`: H (Eq. 10), or the top FC's output with model.top_fc."""
        return self.top(self.dropout(self.rnn(seq)))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(seq))

    def weight_matrices(self) -> list[torch.Tensor]:
        """theta of Eq. 11: the recurrent net's weight matrices (no biases)."""
        return self.rnn.weight_matrices()


class PoolFusion(nn.Module):
    """The max / avg aggregation of branch features (Rao et al. 2016b) that Sec. 1 contrasts with."""

    def __init__(self, kind: str, input_size: int, cfg: ModelConfig):
        super().__init__()
        self.kind = kind
        self.dropout = nn.Dropout(cfg.dropout)
        self.top, width = _top_fc(input_size, cfg)
        self.fc = nn.Linear(width, cfg.num_classes)

    def features(self, seq: torch.Tensor) -> torch.Tensor:
        """The input of the classifier `fc`: the pooled V (through the top FC with model.top_fc)."""
        pooled = seq.amax(dim=1) if self.kind == "max" else seq.mean(dim=1)
        return self.top(self.dropout(pooled))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(seq))

    def weight_matrices(self) -> list[torch.Tensor]:
        return []


def fusion_head(fusion: str, input_size: int, cfg: ModelConfig) -> nn.Module | None:
    """The fusion head of Sec. 3.3 for a fusion kind, reading V_1..V_T of `input_size`; None where there is nothing
    to train (softmax: the main classifier; ensemble: the average of the branch classifiers)."""
    if fusion in RNN_FUSIONS:
        return RNNFusion(fusion, input_size, cfg)
    if fusion in ("max", "avg"):
        return PoolFusion(fusion, input_size, cfg)
    return None


# ----------------------------------------------------------------------------- the whole model


@dataclass
class Stage:
    """One step of the multi-stage training (Sec. 3.2, 4.1): what it trains; everything else is frozen."""

    name: str
    trunk_stages: list[int] = field(default_factory=list)  # 0-based trunk stages trained here
    heads: list[str] = field(default_factory=list)  # branch keys and/or "main"


class UnifiedCNNRNN(nn.Module):
    """The unified CNN-RNN of Fig. 2: trunk, side branches, main branch and a fusion head (per variant)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.trunk = Trunk(cfg)
        ch = cfg.stage_channels()
        self.taps = cfg.taps
        self.branches = nn.ModuleDict({_branch_key(t): Branch(ch[tap_stage(t)], cfg) for t in self.taps})
        self.main = MainBranch(ch[-1], len(self.taps), cfg)
        if cfg.fusion in RNN_FUSIONS and self.taps and cfg.branch_feature != cfg.fused_feature:
            raise ConfigError("branch_feature and fused_feature must be equal: the RNN reads both")
        self.head = fusion_head(cfg.fusion, cfg.fused_feature if self.taps else cfg.main_fc, cfg)

    # --- which parts exist and how they are trained

    @property
    def feature_keys(self) -> list[str]:
        """The sequence V_1..V_T fed to the fusion head: side branches low to high, then the main branch."""
        return [*self.branches.keys(), "main"]

    def cnn_stages(self) -> list[Stage]:
        """Sec. 4.1: "if the first branch training is finished, the second branch training will begin with the
        first branch fixed, and so on"; the main branch last. One branch per stage, so each stage trains and logs
        its own head. A trunk stage is trained together with the first branch that taps it (or with the main
        branch when no side branch does, as for 4 branches' stage 4): with six branches, branch 0 trains trunk
        stage 1 and branch 1 then trains on it frozen."""
        stages, pending = [], 0
        for t in self.taps:  # low to high level
            s = tap_stage(t)
            stages.append(Stage(_branch_key(t), list(range(pending, s + 1)), [_branch_key(t)]))
            pending = max(pending, s + 1)
        stages.append(Stage("main", list(range(pending, 4)), ["main"]))
        return stages

    def stage_modules(self, stage: Stage) -> list[tuple[str, nn.Module]]:
        """(state-dict prefix, module) of every part a stage trains: its trunk stages, then its heads."""
        named = [(f"trunk.stages.{s}", self.trunk.stages[s]) for s in stage.trunk_stages]
        named += [(k, self.main if k == "main" else self.branches[k]) for k in stage.heads]
        return named

    def cnn_modules(self) -> list[nn.Module]:
        return [self.trunk, self.branches, self.main]

    # --- forward passes

    def extract(self, x: torch.Tensor, heads: list[str] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Features V and classifier logits of the requested branches ("main" included), computing the trunk only
        as deep as they need. Frozen parts (requires_grad False) build no autograd graph."""
        heads = self.feature_keys if heads is None else heads
        keys = {_branch_key(t): t for t in self.taps}
        need_main = "main" in heads
        depth = 4 if need_main else max(tap_stage(keys[k]) for k in heads) + 1
        return self.heads_from_maps(self.trunk(x, depth), heads)

    def heads_from_maps(
        self, maps: dict[str, torch.Tensor], heads: list[str] | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """extract() on trunk maps computed already: CNNs that share one trunk need one trunk pass."""
        heads = self.feature_keys if heads is None else heads
        keys = {_branch_key(t): t for t in self.taps}
        need_main = "main" in heads
        out = {}
        side_keys = list(self.branches.keys()) if need_main else [k for k in heads if k != "main"]
        for k in side_keys:
            v = self.branches[k](maps[keys[k]])
            out[k] = (v, self.branches[k].classifier(v))
        if need_main:
            v = self.main(maps["pool4"], [out[k][0] for k in self.branches.keys()])
            out["main"] = (v, self.main.logits(v))
        return {k: out[k] for k in heads}

    def last_fc_input(self, feats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """What the variant's last FC reads (Sec. 4.4 replaces that FC): H of the RNN (Eq. 10) or the pooled V (max,
        avg), through the top FC with top_fc; the main branch's V (softmax); for the ensemble, which has no single
        last FC, all V concatenated."""
        if self.cfg.fusion == "softmax":
            return feats["main"][0]
        seq = torch.stack([feats[k][0] for k in self.feature_keys], dim=1)
        return seq.flatten(1) if self.cfg.fusion == "ensemble" else self.head.features(seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final class logits of the variant."""
        feats = self.extract(x)
        return self.fuse(feats)

    def fuse(self, feats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        fusion = self.cfg.fusion
        if fusion == "softmax":
            return feats["main"][1]
        if fusion == "ensemble":
            # average of the five classifiers' category scores, returned as log-probabilities
            probs = torch.stack([F.softmax(feats[k][1].float(), dim=1) for k in self.feature_keys]).mean(0)
            return probs.clamp_min(1e-12).log()
        seq = torch.stack([feats[k][0] for k in self.feature_keys], dim=1)  # (B, T, D): V_1..V_T
        return self.head(seq)


# ----------------------------------------------------------------------------- geometry


def trunk_layers(cfg: ModelConfig) -> list[tuple[str, int, int, int]]:
    """(name, kernel, stride, padding) of every spatial layer of the trunk, in order."""
    layers = [
        ("conv1", cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding),
        ("conv1_1x1", 1, 1, 0),
        ("pool1", 3, 2, 0),
    ]
    for s in range(2, 5):
        layers += [
            (f"conv{s}", cfg.conv_kernel, 1, cfg.conv_kernel // 2),
            (f"conv{s}_1x1", 1, 1, 0),
            (f"pool{s}", 3, 2, 0),
        ]
    return layers


def feature_map_sizes(cfg: ModelConfig, input_size: int) -> dict[str, int]:
    """Spatial size after each trunk layer for a square input."""
    size, out = input_size, {}
    for name, k, s, p in trunk_layers(cfg):
        size = (size + 2 * p - k) // s + 1
        if size < 1:
            raise ConfigError(f"input of {input_size} px is too small: the map vanishes at {name}")
        out[name] = size
    return out


def receptive_field(cfg: ModelConfig, layer: str) -> tuple[int, int, float]:
    """Theoretical receptive field (size, jump, start) of one unit of `layer` (Zhou et al. 2014, as used for
    Fig. 3): unit (i, j) sees input pixels [start + i*jump - size/2, start + i*jump + size/2) along each axis."""
    rf, jump, start = 1, 1, 0.5
    for name, k, s, p in trunk_layers(cfg):
        rf = rf + (k - 1) * jump
        start = start + ((k - 1) / 2 - p) * jump
        jump = jump * s
        if name == layer:
            return rf, jump, start
    raise ConfigError(f"unknown layer {layer!r}; choose one of {[n for n, *_ in trunk_layers(cfg)]}")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
