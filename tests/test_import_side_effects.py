"""``import dgn_plugins`` imports no toolkit and changes no process-wide state (a fresh interpreter each)."""
import json
import subprocess
import sys

TOOLKITS = ("mmengine", "mmcv", "mmdet", "mmseg", "detectron2")
#: What only the evaluation tooling (or the first regroup) needs.
HEAVY = ("scipy", "matplotlib", "pycocotools")

_PROBE = """
import json, sys, torch
def allow_list():  # the process-wide allow-list, on every torch (empty before 2.5)
    get = getattr(torch.serialization, "get_safe_globals", None)
    return [repr(g) for g in get()] if get else []
before = allow_list()
import dgn_plugins
after = allow_list()
print(json.dumps({"modules": sorted({m.split(".")[0] for m in sys.modules}), "safe_globals_changed": before != after,
                  "adapters": sorted(m for m in sys.modules if m.startswith(("dgn_plugins.openmmlab",
                                                                              "dgn_plugins.detectron2")))}))
"""


def _probe():
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_dgn_plugins_has_no_toolkit_side_effects():
    result = _probe()
    assert not set(TOOLKITS) & set(result["modules"]), set(TOOLKITS) & set(result["modules"])
    assert not set(HEAVY) & set(result["modules"]), set(HEAVY) & set(result["modules"])
    assert result["adapters"] == []
    assert result["safe_globals_changed"] is False


def test_the_openmmlab_adapter_registers_but_allow_lists_only_when_asked():
    import pytest

    pytest.importorskip("mmengine", reason="MMEngine is not installed")
    # (importing toolkits makes torch allow-list its own DTensor types: ours are the ones to watch)
    code = (
        "import torch; from mmengine.registry import HOOKS, MODELS;"
        "from mmengine.logging.history_buffer import HistoryBuffer;"
        "from dgn_plugins.compat import HAS_SAFE_GLOBALS, get_safe_globals;"
        "import dgn_plugins.openmmlab as adapter; assert MODELS.get('DGN') and HOOKS.get('DGNRegroupHook');"
        "assert HistoryBuffer not in get_safe_globals(), 'allow-listed at import';"
        # torch < 2.6 loads checkpoints with weights_only=False by default: nothing to allow-list there
        "assert adapter.allow_checkpoint_types() is HAS_SAFE_GLOBALS;"
        "assert (HistoryBuffer in get_safe_globals()) is HAS_SAFE_GLOBALS"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
