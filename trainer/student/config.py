"""Student training configuration: :class:`StudentConfig`, the ``--preset`` table and the named choices.

No torch here (the CLI's ``--help`` stays fast).  Every field is a ``--flag`` of ``python trainer/main.py student``
(:mod:`trainer.student.cli`); a checkpoint's JSON stores the whole config (``"config"``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: occluder categories sampled for training (no "block": the ID-GAN square is an evaluation condition)
TRAIN_MASK_WEIGHTS = {"simple": 0.45, "complex": 0.25, "human_body": 0.1, "hybrid": 0.1, "sunglasses": 0.05,
                      "scarf": 0.05}


#: where training occluders come from (``--occluders``)
OCCLUDER_SOURCES = ("templates", "realistic", "mixed")


@dataclass
class StudentConfig:
    """Everything a training run depends on (stored in every checkpoint's JSON)."""

    data: str = "../shared/data/celeba_subset"
    templates: str | None = "../shared/data/mask_templates"
    out: str = "out/student"
    cache: str | None = None              # alignment + teacher cache (default <out>/cache)
    model: str | None = None              # bundle used for detection/alignment (default: baseline)
    init: str | None = None               # student init: dlib .dat / safetensors (default: packaged dlib .dat)
    arch: str = "dlib"                    # dlib (teacher copy, 150 px chips) | resnet18 | mobilefacenet (112 px crops)
    embedding_dim: int = 512              # student embedding width (ignored for dlib: 128)
    preset: str | None = None             # the preset the fields were filled from (record only; see from_preset)
    epochs: int = 2
    p_identities: int = 8                 # P identities per batch
    k_images: int = 4                     # K images per identity  (batch = P * K)
    steps_per_epoch: int = 0              # 0: len(train images) // batch
    max_per_identity: int = 10            # cap images per identity (0 = all)
    keep_undetected: bool = True          # images without a detected face: train on them at the set's median
    #                                       landmarks (counted and reported; False leaves them out). Unreadable
    #                                       images are always left out (counted).
    lr: float = 1e-5                      # Adam at 1e-4 wrecks the dlib weights within 2 steps (val 0.94 -> 0.77)
    optimizer: str = "adam"               # adam | sgd
    weight_decay: float = 0.0
    lr_step_epochs: int = 0               # lr x 0.1 every N epochs (0: constant); derived from the epoch (resumable)
    instance: str = "hard"                # hard | soft | none
    lambda_i: float = 1.0
    lambda_p: float = 1.0
    lambda_t: float = 2.0
    ce_weight: float = 0.0                # > 0 adds ArcFace CE on training identities
    head_lr_mult: float = 100.0           # ArcFace head learning rate = lr * head_lr_mult (the backbone is pretrained)
    # capstone (Liu & Shao 2022, eq. 5): distil the masked embedding towards the *clean* embedding of the same
    # image through the same student: L += pairwise_beta * pairwise_distill(s(masked), s(clean))
    pairwise: str = "none"                # none | mse | cosine | margin_cosine
    pairwise_beta: float = 1.0            # weight beta of the pairwise term
    pairwise_correct_only: bool = False   # distil only samples the ArcFace head gets right on masked AND clean
    pairwise_margin: float = 0.5          # m of margin_cosine (radians)
    pairwise_clean_ce: bool = True        # with pairwise: ArcFace CE on the clean embeddings too (eq. 5)
    # teacher: None = the dlib ResNet port (150x150 dlib chips, 128-d); else any ONNX face embedder
    teacher_onnx: str | None = None       # .onnx embedder used as the (frozen) teacher
    teacher_crop: str = "dlib150"         # dlib150 | arcface112: the crops the ONNX teacher sees
    teacher_input: str = "uint8_nhwc_rgb"  # the ONNX teacher's input convention (TEACHER_INPUTS)
    mask_prob: float = 0.8                # fraction of samples that get an occluder
    occluders: str = "templates"          # templates (MaskSynthesizer categories) | realistic (trainer.data.occluders,
    #                                       training families only) | mixed (half each)
    cutouts: str | None = None            # harvested cutout folder for the realistic families (harvest part only)
    # mask-aware matching (sdk.views): with this probability a training chip (masked or clean) is shown as its
    # upper-face view (rows below eyes + upper_cut * (nose - eyes) painted upper_fill), distilled towards the
    # teacher's *clean full-face* embedding, so one network serves the full and the upper view of a bundle with
    # match.mask_aware
    upper_view_prob: float = 0.0
    upper_cut: float = 0.8
    upper_fill: int = 128
    # unlabelled clean faces (issue #9.3): a face list of tools/build_face_list.py; its images of ``extra_sources``
    # join every training batch (``extra_per_batch`` of them) for the label-free terms (hard instance, pair,
    # triplet); the identity-labelled PK part of the batch and the validation split are unchanged
    extra_faces: str | None = None        # faces.jsonl (None: off)
    extra_sources: tuple = ("utkface", "extra")
    extra_per_batch: int = 32
    exclude: str | None = None            # text file of image paths (one per line) never trained on
    completion: str | None = None         # inpainter generator.safetensors: train on completed faces (None: masked)
    mask_weights: dict = field(default_factory=lambda: dict(TRAIN_MASK_WEIGHTS))
    val_fraction: float = 0.1
    val_pairs: int = 1200                 # genuine + impostor pairs (half each) for validation
    threads: int = 2
    workers: int = 1                      # DataLoader worker processes (0 = in-process)
    seed: int = 0
    ckpt_every: int = 50                  # steps between "last" checkpoints (and at every epoch end)
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.lr_step_epochs < 0:
            raise ValueError(f"lr_step_epochs must be >= 0, got {self.lr_step_epochs}")
        if self.pairwise not in PAIRWISE:
            raise ValueError(f"pairwise must be one of {', '.join(PAIRWISE)}, got {self.pairwise!r}")
        if self.pairwise_beta < 0:
            raise ValueError(f"pairwise_beta must be >= 0, got {self.pairwise_beta}")
        if self.pairwise_correct_only and not self.ce_weight > 0:
            raise ValueError("pairwise_correct_only selects the samples the ArcFace head classifies correctly: it "
                             f"needs the ArcFace CE term (ce_weight > 0), got ce_weight={self.ce_weight} "
                             "(the capstone recipe is ArcFace + beta * pairwise distillation: pass --ce-weight 1)")
        if self.pairwise_correct_only and self.pairwise == "none":
            raise ValueError("pairwise_correct_only selects the samples of the pairwise term: set pairwise "
                             "(--pairwise mse|cosine|margin_cosine)")
        if not 0.0 <= self.upper_view_prob <= 1.0:
            raise ValueError(f"upper_view_prob must be in [0, 1], got {self.upper_view_prob}")
        if self.upper_view_prob > 0:
            from sdk.views import MaskAwareConfig

            MaskAwareConfig(upper_cut=self.upper_cut, fill=self.upper_fill)  # ValueError naming a bad value
        if self.extra_faces:
            if self.instance == "soft" or self.ce_weight > 0 or self.pairwise != "none":
                raise ValueError("extra_faces adds unlabelled faces: they suit the label-free terms only (hard "
                                 "instance, pair, triplet); the soft instance term, ArcFace CE and the pairwise "
                                 "capstone need identity labels (use --instance hard --ce-weight 0 --pairwise none)")
            if self.extra_per_batch < 1:
                raise ValueError(f"extra_per_batch must be >= 1, got {self.extra_per_batch}")
            self.extra_sources = tuple(self.extra_sources)
        if self.occluders not in OCCLUDER_SOURCES:
            raise ValueError(f"occluders must be one of {', '.join(OCCLUDER_SOURCES)}, got {self.occluders!r}")
        if self.teacher_crop not in TEACHER_CROPS:
            raise ValueError(f"teacher_crop must be one of {', '.join(TEACHER_CROPS)}, got {self.teacher_crop!r}")
        if self.teacher_input not in TEACHER_INPUTS:
            raise ValueError(f"teacher_input must be one of {', '.join(TEACHER_INPUTS)}, got {self.teacher_input!r}")

    @property
    def batch_size(self) -> int:
        return self.p_identities * self.k_images

    @property
    def student_dim(self) -> int:
        """Width of the student's embedding: 128 for ``dlib``, else ``embedding_dim``."""
        return 128 if self.arch == "dlib" else int(self.embedding_dim)

    @property
    def input_size(self) -> int:
        """Side of the student's square input in pixels: 150 (dlib chip) or 112 (ArcFace crop)."""
        return 150 if self.arch == "dlib" else ARC_SIZE

    @property
    def crop(self) -> str:
        """The student's crop: ``"dlib150"`` (dlib arch) or ``"arcface112"``."""
        return "dlib150" if self.arch == "dlib" else "arcface112"

    def lr_factor(self, epoch: int) -> float:
        """Step schedule: the lr multiplier during 0-based ``epoch`` (``0.1 ** (epoch // lr_step_epochs)``)."""
        return 0.1 ** (int(epoch) // self.lr_step_epochs) if self.lr_step_epochs > 0 else 1.0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "StudentConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_preset(cls, preset: str | None, **explicit: Any) -> "StudentConfig":
        """A config whose fields come from ``explicit`` first, then from ``PRESETS[preset]``, then the defaults.

        A preset only fills the fields the caller did not pass: ``from_preset("paper", lr=0.01)`` trains with
        lr 0.01 and every other paper setting (this is what ``--preset`` does with the flags on the command
        line).  ``preset=None`` is plain ``StudentConfig(**explicit)``."""
        if preset is None:
            return cls(**explicit)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **explicit, "preset": preset})


#: student architectures (``StudentConfig.arch``)
ARCHS = ("dlib", "resnet18", "mobilefacenet")
#: capstone pairwise masked/clean distillation kinds (``StudentConfig.pairwise``, :func:`pairwise_distill`)
PAIRWISE = ("none", "mse", "cosine", "margin_cosine")
#: crops an ONNX teacher can see (``StudentConfig.teacher_crop``): side in pixels
TEACHER_CROPS = {"dlib150": 150, "arcface112": 112}
#: ONNX teacher input conventions (``StudentConfig.teacher_input``): what the graph's single input expects
TEACHER_INPUTS = {
    "uint8_nhwc_rgb": "(N, H, W, 3) uint8 RGB, preprocessing inside the graph (what python -m export onnx --family embedder writes)",
    "float_nchw_rgb_pm1": "(N, 3, H, W) float32 RGB, (x / 255 - 0.5) / 0.5 in [-1, 1] (ArcFace / insightface)",
    "float_nchw_bgr_pm1": "(N, 3, H, W) float32 BGR, (x / 255 - 0.5) / 0.5 in [-1, 1]",
    "float_nchw_rgb_255": "(N, 3, H, W) float32 RGB in [0, 255] (this trainer's students, normalisation inside)",
}
#: side of the ArcFace crop the non-dlib students see (sdk.align.ARCFACE_112 template)
ARC_SIZE = 112

#: ``--preset`` values: fields filled when the user did not set them (``StudentConfig.from_preset``).
PRESETS: dict[str, dict[str, Any]] = {
    # Look Through Masks (Li et al., ACM MM 2020) sec. 3.4 / 4.1: ResNet-18 + one 512-d embedding layer, batch 128,
    # SGD momentum 0.9, lr 0.1 divided by 10 every 24 epochs, weight decay 5e-4, lambda_p = 1, lambda_t = 2, the
    # soft instance term, CE.  The paper gives no epoch count: 60 is our choice (two lr drops, then 12 epochs at
    # 1e-3).  All images of every identity.  The ArcFace head trains at the backbone's lr (no pretrained backbone).
    "paper": dict(arch="resnet18", embedding_dim=512, p_identities=32, k_images=4, optimizer="sgd", lr=0.1,
                  lr_step_epochs=24, weight_decay=5e-4, lambda_i=1.0, lambda_p=1.0, lambda_t=2.0, instance="soft",
                  ce_weight=1.0, head_lr_mult=1.0, epochs=60, max_per_identity=0),
    # a smoke run that finishes in minutes on 2 CPU cores: MobileFaceNet (128-d), 20 batches of 8 x 4, Adam 1e-3,
    # the paper's loss terms.
    "cpu": dict(arch="mobilefacenet", embedding_dim=128, p_identities=8, k_images=4, epochs=1, steps_per_epoch=20,
                optimizer="adam", lr=1e-3, lr_step_epochs=0, weight_decay=0.0, lambda_p=1.0, lambda_t=2.0,
                instance="soft", ce_weight=1.0, head_lr_mult=1.0),
}
