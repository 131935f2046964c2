"""The networks and the optimiser of a student run: :func:`build_models`."""
from __future__ import annotations

from trainer.student.config import StudentConfig
from trainer.student.models import load_student_weights, new_student
from trainer.student.teacher import OnnxTeacher, build_teacher, teacher_dim

__all__ = ["build_models"]


def build_models(cfg: StudentConfig, n_train_ids: int, teacher_centres=None, teacher=None):
    """``(teacher, student, loss_mod, head, opt)`` for ``cfg``.

    * teacher: ``teacher`` when given, else :func:`build_teacher` -- the frozen dlib ResNet (a ``.dat``
      ``cfg.init`` for the dlib arch, else the packaged one), 128-d, or the :class:`OnnxTeacher` of
      ``cfg.teacher_onnx`` (Dt = its output width).
    * student: ``dlib``: a copy of the dlib ResNet (or ``cfg.init``); ``resnet18`` / ``mobilefacenet``: untrained
      (or ``cfg.init`` of that arch), wrapped in :class:`ArcInput`; all take float RGB [0, 255] NCHW.
    * loss: :class:`RelationalDistillLoss` (student_dim -> Dt; a learned linear projection for the instance
      term unless the student is the dlib copy of the dlib teacher).  ``teacher_centres``: (n_train_ids, Dt)
      teacher identity centres (needed for ``instance="soft"``).
    * head: ArcFace over the student's embedding when ``ce_weight > 0``; its class weights start at the teacher's
      identity centres for the dlib student taught by the dlib teacher (the student starts *as* the teacher),
      randomly otherwise.
    * opt: Adam / SGD (momentum 0.9); param group 0 = student + loss, group 1 = head at ``lr * head_lr_mult``.
    """
    import torch

    from trainer.losses.distill import RelationalDistillLoss
    from trainer.losses.margin import ArcFaceHead

    dlib = cfg.arch == "dlib"
    init_dat = bool(cfg.init) and str(cfg.init).endswith(".dat")
    if init_dat and not dlib:
        raise ValueError(f"--init {cfg.init}: a dlib .dat cannot initialise a {cfg.arch} student")
    if teacher is None:
        teacher = build_teacher(cfg)
    t_dim = teacher_dim(teacher)
    same_space = dlib and not isinstance(teacher, OnnxTeacher)  # the dlib student starts as the dlib teacher
    if cfg.init:
        student = load_student_weights(cfg.init, arch=cfg.arch)
        if not dlib and student.embedding_dim != cfg.student_dim:
            raise ValueError(f"--init {cfg.init} is {student.embedding_dim}-d, the config asks for {cfg.student_dim}")
    else:
        student = new_student(cfg.arch, cfg.student_dim)
    student.train()
    dim = cfg.student_dim
    soft = cfg.instance == "soft"
    if teacher_centres is not None and tuple(teacher_centres.shape[1:]) != (t_dim,):
        raise ValueError(f"teacher_centres are {tuple(teacher_centres.shape)}, the teacher is {t_dim}-d")
    loss_mod = RelationalDistillLoss(dim, t_dim, instance=cfg.instance, lambda_i=cfg.lambda_i, lambda_p=cfg.lambda_p,
                                     lambda_t=cfg.lambda_t, ce_weight=cfg.ce_weight,
                                     # a student trained from scratch (or taught by another network) lives on its
                                     # own scale: the instance term always compares it through a learned
                                     # projection (also at equal widths)
                                     projection="identity" if same_space else "linear",
                                     n_classes=n_train_ids if soft else None,
                                     teacher_centres=teacher_centres if soft else None, student_centres="ema")
    head = ArcFaceHead(dim, n_train_ids) if cfg.ce_weight > 0 else None
    if head is not None and teacher_centres is not None and same_space:
        # the student starts as the teacher: class weights = the teacher's identity centres, so the CE term
        # starts from a sensible classifier instead of pulling the pretrained features towards random ones
        with torch.no_grad():
            head.weight.copy_(torch.nn.functional.normalize(teacher_centres.float(), dim=1))
    params = [{"params": [q for q in list(student.parameters()) + list(loss_mod.parameters()) if q.requires_grad]}]
    if head is not None:
        params.append({"params": list(head.parameters()), "lr": cfg.lr * cfg.head_lr_mult})
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be adam | sgd, got {cfg.optimizer!r}")
    return teacher, student, loss_mod, head, opt
