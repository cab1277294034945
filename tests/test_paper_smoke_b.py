"""The paper profile's smoke runs on ADE20K (with the Mask2Former teacher) and COCO-Stuff 10K:
the data stage on tiny folders in the exact layouts, then every student architecture's +BCD run
(and its teacher) for two iterations (tests/test_paper_profile.py: the helpers, the other
datasets in test_paper_smoke_*.py)."""
import pytest

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from test_paper_profile import smoke_tests  # noqa: E402

KEYS = ('ade20k', 'coco_stuff10k')
smoke, test_two_iterations_per_student_architecture = smoke_tests(KEYS)
