"""The pipeline through mmx finetune: packed and padded batches give the same training losses (labels shift within
each packed sample, positions restart, dummy images stay inert); InternVL3 on 112 px digits (4 tiles + a thumbnail
each, 1-D positions restarting per sample)."""
import numpy as np
import pytest

from mmx.data.digits import make_digits_vqa


@pytest.fixture(scope="module")
def mm_dir(model_dirs, tmp_path_factory):
    from mmx.convert.drivers import hf_to_mm

    def convert(family):
        out = str(tmp_path_factory.mktemp("mm") / "mm")
        hf_to_mm(model_dirs[family], out)
        return out
    return convert


@pytest.mark.parametrize("family,size", [("qwen2_5_vl", None), ("internvl", 112)])
def test_packed_and_padded_training_losses_match(mm_dir, tmp_path, family, size):
    from mmx.train.config import load_config
    from mmx.train.finetune import finetune

    mm_dir = mm_dir(family)
    digits = make_digits_vqa(str(tmp_path / "digits"), max_samples=6, held_out=0.0, **({"size": size} if size else {}))
    losses = {}
    for packing in (False, True):
        config = load_config(base={
            "model": {"init_from_hf_path": mm_dir},
            "data": {"dataset": digits["train"], "dataset_dir": digits["dataset_dir"], "cutoff_len": 128,
                     "packing": packing},
            "training": {"train_iters": 2, "micro_batch_size": 3, "global_batch_size": 3, "lr": 1e-3, "seed": 3,
                         "progress_bar": False, "peak_tflops": 1.0, "log_dir": str(tmp_path / f"log{packing}")}})
        losses[packing] = np.asarray(finetune(config, echo=lambda *args: None).history)
    assert losses[False].shape == (2,) and losses[False][0] > 1.0
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
