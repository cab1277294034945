"""The paper profile's smoke runs on Cityscapes and Pascal VOC: the data stage on tiny folders in the exact
layouts, then every student architecture's +BCD run (and its teacher) for two iterations
(tests/test_paper_profile.py: the helpers, the other datasets in test_paper_smoke_*.py)."""
import pytest

pytest.importorskip("mmrazor", reason="the OpenMMLab stack is installed by tools/setup_env.sh")

from test_paper_profile import make_smoke, two_iterations  # noqa: E402

KEYS = ('cityscapes', 'voc12aug')


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    return make_smoke(tmp_path_factory.mktemp("paper-smoke"), KEYS)


@pytest.mark.parametrize("dataset", KEYS)
def test_two_iterations_per_student_architecture(smoke, dataset, monkeypatch):
    two_iterations(smoke, dataset, monkeypatch)
