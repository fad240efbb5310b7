import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where a CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # the marker, not a parameter that happens to be "cuda"
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models and AutoAttack's hundreds of tiny steps: one thread is as fast, and far faster when other
    processes share the cores. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One torch.compile cache for the session: compiling is slow to warm up, so the tests of compiled forms share
    what they compile, and the processes they start inherit it (``ROBUST_SABN_CACHE``)."""
    folder = tmp_path_factory.mktemp("compile-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROBUST_SABN_CACHE", str(folder))
        yield folder
