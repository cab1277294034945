"""The one place where bcd meets OpenMMLab (mmengine, mmseg, mmrazor).

Importing this package applies the torch-2.13 compatibility patches (:mod:`bcd.mm.compat`) and
registers bcd's modules so that any mmrazor/mmseg config can name them:

- mmrazor ``MODELS``: ``PairedTeacherDistill`` (the distillation algorithm, :mod:`bcd.mm.distill`),
  every loss declared in ``bcd/losses`` (:mod:`bcd.methods`; BCD's and the baselines'),
  ``HierarchicalFusion`` and ``SegDataSampleLabels`` (connectors);
- mmengine ``HOOKS``: ``DistillLossDecayHook`` (r(t), Eq. 7-8), ``NonFiniteLossHook``,
  ``DistillScalarsHook``, ``TrainLogHook``, ``GradNormHook`` (each loss term's gradient
  norm on the student backbone), ``ProgressHook`` (progress lines), ``RNGStateHook``,
  ``TrainingSeedHook``; mmengine ``LOOPS``:
  ``ResumableIterBasedTrainLoop`` (exact resume, :mod:`bcd.mm.resume`); for multi-process
  runs (:mod:`bcd.mm.distributed`) ``SyncNormBuffersHook`` and the model wrapper
  ``BCDDistributedDataParallel``;
- mmengine ``OPTIM_WRAPPERS``: ``AutocastOptimWrapper`` (bf16 autocast, :mod:`bcd.mm.amp`);
- mmseg ``DATASETS``: ``BCDShapesDataset``; mmseg ``METRICS``: ``PerClassIoUMetric``;
- mmseg ``MODELS``: ``ResNetV1c38``, ``EfficientNetB1``, ``EfficientNetLite``, ``ESPNetC``,
  ``ESPNetHead``, ``TensorMask2FormerHead``, ``WeightedCrossEntropyLoss`` (:mod:`bcd.mm.models`).

In a user's own config: ``custom_imports = dict(imports=['bcd.mm'], allow_failed_imports=False)``.
"""
from . import compat

compat.apply()

from mmseg.utils import register_all_modules as _register_mmseg  # noqa: E402

_register_mmseg(init_default_scope=False)
import mmrazor.models  # noqa: E402,F401  (registers mmrazor's algorithms, distillers, recorders)

from . import registry  # noqa: E402,F401  (registers modules)
from . import hooks  # noqa: E402,F401
from . import resume  # noqa: E402,F401  (RNGStateHook, ResumableIterBasedTrainLoop)
from . import metrics  # noqa: E402,F401
from . import datasets  # noqa: E402,F401
from . import models  # noqa: E402,F401  (ResNetV1c38, EfficientNetB1, ESPNetC, ESPNetHead)
from . import distributed  # noqa: E402,F401  (DDP wrapper, SyncNormBuffersHook)
from . import distill  # noqa: E402,F401  (PairedTeacherDistill, TrainingSeedHook)
from . import amp  # noqa: E402,F401  (AutocastOptimWrapper: train.<role>.amp)
