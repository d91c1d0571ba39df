import os
import sys

import pytest

# Tests import helpers from this folder (reference.py) by plain name.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
