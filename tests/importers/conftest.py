import gpt2_files
import keras_hub
import pytest


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A small random GPT-2 in the Hugging Face layout."""
    path = str(tmp_path_factory.mktemp("hf_gpt2"))
    gpt2_files.write_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def reference(hf_dir):
    """keras-hub's `GPT2CausalLM` read from the same files, greedy."""
    model = keras_hub.models.GPT2CausalLM.from_preset(hf_dir, preprocessor=None)
    model.compile(sampler="greedy")
    return model


@pytest.fixture(scope="session")
def imported(hf_dir):
    from tflm.importers import gpt2

    return gpt2.load_hf_gpt2(hf_dir)
