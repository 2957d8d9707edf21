"""SDXL analyses (issue 8) on a tiny SDXL pipeline built in-process from configs (no downloads).

The pipeline has SDXL's component classes and wiring (tests/sdxl_tiny.py): 16 x 16 images,
8 x 8 x 4 latents, 8 cross-attention layers (down_blocks.1, mid_block, up_blocks.0) on a 4 x 4 grid.
"""

from __future__ import annotations

import json
import time
from functools import partial

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lcsbench.analysis.locality import locality_radius, pixel_jacobian  # noqa: E402
from lcsbench.analysis.sdxl.ablation import (STOP_WORDS, content_words, prompt_without_word,  # noqa: E402
                                             rank_words, word_influence)
from lcsbench.analysis.sdxl.attention import (capture_cross_attention, concept_token,  # noqa: E402
                                              cross_attention_layers, end_token, resolve_layers, word_token_span)
from lcsbench.analysis.sdxl.cosines import compositional_similarity, cosine_matrices, difference_vectors  # noqa: E402
from lcsbench.analysis.sdxl.pipeline import encode_prompts, unconditional_condition  # noqa: E402
from lcsbench.analysis.sdxl.prompts import LOCALITY_PROMPT, ConceptPrompt  # noqa: E402
from lcsbench.analysis.sdxl.studies import attention_study  # noqa: E402
from lcsbench.models.sdxl import NotAPipelineError, SDXLDenoiser, load_sdxl_pipeline, sample_euler  # noqa: E402
from tests.sdxl_tiny import build_tiny_sdxl_pipeline  # noqa: E402

LATENT = (8, 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny UNet is 10-50x slower with 2 threads on a shared 2-core machine (thread contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl_tokenizer"))


@pytest.fixture(scope="module")
def saved_pipe(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl_tiny_pipeline")
    pipe.save_pretrained(folder)
    return folder


def noise(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, 4, *LATENT), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Loading


def test_full_pipeline_runs_on_cpu_in_seconds(pipe):
    start = time.perf_counter()
    images = pipe("a dog on the left", num_inference_steps=10, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert time.perf_counter() - start < 20
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_load_from_a_local_folder_gives_the_same_model(pipe, saved_pipe):
    loaded = load_sdxl_pipeline(saved_pipe)
    assert type(loaded.scheduler).__name__ == "EulerDiscreteScheduler"
    cond = encode_prompts(pipe, ["a cat"])
    x = noise()
    expected = SDXLDenoiser(pipe.unet, pipe.scheduler)(x, 2.0, cond)
    got = SDXLDenoiser(loaded.unet, loaded.scheduler)(x, 2.0, encode_prompts(loaded, ["a cat"]))
    torch.testing.assert_close(got, expected)


def test_a_path_that_is_not_a_pipeline_is_a_clear_error(tmp_path, saved_pipe):
    with pytest.raises(NotAPipelineError, match="does not exist.*download"):
        load_sdxl_pipeline(tmp_path / "missing")
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(NotAPipelineError, match="is a file"):
        load_sdxl_pipeline(tmp_path / "weights.safetensors")
    with pytest.raises(NotAPipelineError, match="model_index.json"):
        load_sdxl_pipeline(tmp_path)
    # An SD 1.x-style folder: a pipeline, but without SDXL's second text encoder.
    sd15 = tmp_path / "sd15"
    sd15.mkdir()
    spec = json.loads((saved_pipe / "model_index.json").read_text())
    spec.pop("text_encoder_2")
    spec["_class_name"] = "StableDiffusionPipeline"
    (sd15 / "model_index.json").write_text(json.dumps(spec))
    with pytest.raises(NotAPipelineError, match=r"not a Stable Diffusion XL.*text_encoder_2"):
        load_sdxl_pipeline(sd15)


# ---------------------------------------------------------------------------------------------------------------
# Denoiser adapter


def test_adapter_is_the_epsilon_prediction_in_edm_form(pipe):
    """D = x - sigma * eps(x / sqrt(sigma^2 + 1), t), with t the scheduler's timestep of that sigma."""
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    scheduler.set_timesteps(10)
    index = 3
    sigma, timestep = scheduler.sigmas[index], scheduler.timesteps[index]
    cond = encode_prompts(pipe, ["a horse"])
    x = noise() * 3
    with torch.no_grad():
        eps = pipe.unet(scheduler.scale_model_input(x, timestep), timestep, encoder_hidden_states=cond.prompt_embeds,
                        added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids}).sample
        got = SDXLDenoiser(pipe.unet, pipe.scheduler)(x, float(sigma), cond)
    torch.testing.assert_close(got, x - sigma * eps, rtol=1e-4, atol=1e-4)


def test_euler_on_the_adapter_reproduces_the_pipeline(pipe):
    """Guided Euler sampling through the adapter equals the pipeline's own EulerDiscreteScheduler run."""
    prompt, start = "a dog on the left", noise(seed=3)
    cond = encode_prompts(pipe, [prompt])
    denoiser = SDXLDenoiser(pipe.unet, pipe.scheduler, 5.0, unconditional_condition(pipe, 1))
    run = sample_euler(denoiser, pipe.scheduler, cond, start, num_inference_steps=8, record_steps=[1, 4])
    expected = pipe(prompt, num_inference_steps=8, guidance_scale=5.0, latents=start.clone(),
                    output_type="latent").images
    torch.testing.assert_close(run.final, expected, rtol=1e-4, atol=1e-4)
    assert sorted(run.states) == [1, 4] and run.sigmas[1] > run.sigmas[4] > 0


def test_locality_functions_run_unchanged_on_the_adapter(pipe):
    cond = encode_prompts(pipe, [LOCALITY_PROMPT])
    denoiser = SDXLDenoiser(pipe.unet, pipe.scheduler, 5.0, unconditional_condition(pipe, 1)).eval()
    x = noise(batch=2, seed=1) * 4.0
    pixels = [(4, 1), (4, 4)]
    heat = pixel_jacobian(denoiser, x, 4.0, cond, pixels)
    assert heat.shape == (2, *LATENT) and (heat >= 0).all()
    # Against a brute-force Jacobian of sample 0 at pixel (4, 1): mean over output channels of the sum over
    # input channels of |dD / dx|.
    full = torch.autograd.functional.jacobian(lambda inp: denoiser(inp, 4.0, cond)[0, :, 4, 1], x[:1])
    brute = full[:, 0].abs().sum(dim=1).mean(dim=0)  # [h, w]
    sample1 = torch.autograd.functional.jacobian(lambda inp: denoiser(inp, 4.0, cond)[0, :, 4, 1], x[1:])
    brute = (brute + sample1[:, 0].abs().sum(dim=1).mean(dim=0)) / 2
    torch.testing.assert_close(heat[0], brute, rtol=1e-3, atol=1e-5)
    radius = locality_radius(heat[1], pixels[1])
    assert 0 <= radius <= 4
    # At a tiny noise level D(x) = x - sigma eps ~ x: the map collapses onto the target pixel.
    tiny = pixel_jacobian(denoiser, x, 1e-4, cond, pixels)
    assert tiny[0, 4, 1] == pytest.approx(1.0, abs=0.01)
    assert locality_radius(tiny[0], pixels[0]) == 0


# ---------------------------------------------------------------------------------------------------------------
# Word ablation


def test_prompt_words_and_ablated_prompts():
    words = content_words(LOCALITY_PROMPT)
    assert words == ["beautiful", "photograph", "horse", "middle", "dog", "left", "cat", "right"]
    assert not set(words) & STOP_WORDS
    assert prompt_without_word(LOCALITY_PROMPT, "middle") == \
        "a beautiful photograph with a horse in the, a dog on the left, and a cat on the right"
    assert prompt_without_word("An oil-painting of a Cat.", "cat") == "An oil-painting of a."
    with pytest.raises(ValueError, match=r"'zebra'.*not a word of the prompt.*words are \[.*'horse'"):
        prompt_without_word(LOCALITY_PROMPT, "zebra")


def test_ablating_a_word_changes_the_score_and_an_absent_word_is_an_error(pipe):
    denoiser = SDXLDenoiser(pipe.unet, pipe.scheduler).eval()
    encode = partial(encode_prompts, pipe)
    x, sigma = noise(batch=2, seed=2) * 2.0, 2.0
    prompt = "a dog on the left and a cat on the right"
    result = word_influence(denoiser, encode, x, sigma, prompt, chunk_size=2)
    assert result.words == ["dog", "left", "cat", "right"]
    assert result.maps.shape == (4, *LATENT)
    assert (result.maps.amax(dim=(1, 2)) > 0).all()
    # The "dog" map is the score difference, computed here directly for each sample.
    with torch.no_grad():
        full = denoiser(x, sigma, encode([prompt]))
        without = denoiser(x, sigma, encode([prompt_without_word(prompt, "dog")]))
    expected = ((full - without) / sigma**2).norm(dim=1).mean(dim=0)
    torch.testing.assert_close(result.maps[0], expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="'horse'.*not a word of the prompt"):
        word_influence(denoiser, encode, x, sigma, prompt, words=["horse"])


def test_rank_words_finds_the_dominant_set():
    # Three words at three pixels: [4, 1, 0.5] -> {w0}; [4, 3, 1] -> {w0, w1}; [3, 2, 1.5] -> none.
    maps = torch.tensor([[[4.0, 4.0, 3.0]], [[1.0, 3.0, 2.0]], [[0.5, 1.0, 1.5]]])
    ranking = rank_words(maps)
    assert ranking.num_dominant.tolist() == [[1, 2, 0]]
    assert ranking.dominant[:, 0].tolist() == [[True, True, False], [False, True, False], [False, False, False]]
    assert ranking.order[0].tolist() == [[0, 0, 0]]
    assert ranking.dominant_fraction() == pytest.approx([2 / 3, 1 / 3, 0.0])


# ---------------------------------------------------------------------------------------------------------------
# Cross-attention capture


def run_pipe(pipe, capture=None, guidance_scale=5.0, steps=4, samples=2, prompt="a cat on the left"):
    callback = None if capture is None else capture.pipeline_callback
    return pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale, num_images_per_prompt=samples,
                generator=[torch.Generator().manual_seed(i) for i in range(samples)], output_type="latent",
                callback_on_step_end=callback).images


def test_captured_maps_have_the_documented_shapes_and_sum_to_one_over_tokens(pipe):
    layers = list(cross_attention_layers(pipe.unet))
    # down_blocks.1: 1 attention x 2 transformer layers, mid_block: 1 x 2, up_blocks.0: 2 x 2 (layers + 1).
    assert [layer.split(".")[0] for layer in layers] == ["down_blocks"] * 2 + ["mid_block"] * 2 + ["up_blocks"] * 4
    with capture_cross_attention(pipe.unet, ["all"], steps=[1, 3], latent_size=LATENT) as capture:
        run_pipe(pipe, capture)
    maps = capture.maps
    assert set(maps.sums) == {(layer, step) for layer in layers for step in (1, 3)}
    assert set(maps.step_sigmas) == {1, 2, 3, 4} and maps.step_sigmas[1] > maps.step_sigmas[3]
    for key in maps.sums:
        assert maps.counts[key] == 2  # two samples: the conditional half of the CFG batch of 4
        mean = maps.mean(*key)
        assert mean.shape == (77, 4, 4)  # [tokens, 8 / 2, 8 / 2]: these layers run at half the latent size
        torch.testing.assert_close(mean.sum(dim=0), torch.ones(4, 4))
    # Selected tokens are the same maps restricted to those positions.
    with capture_cross_attention(pipe.unet, ["mid"], steps=[3], tokens=[2, 5], latent_size=LATENT) as selected:
        run_pipe(pipe, selected)
    name = resolve_layers(pipe.unet, ["mid"])[0]
    torch.testing.assert_close(selected.maps.mean(name, 3), maps.mean(name, 3)[[2, 5]])


def test_capture_keeps_the_conditional_half_and_does_not_change_outputs(pipe):
    plain = run_pipe(pipe)
    with capture_cross_attention(pipe.unet, ["up"], steps=[1], latent_size=LATENT) as guided:
        captured = run_pipe(pipe, guided)
    torch.testing.assert_close(captured, plain, rtol=0, atol=0)
    # At step 1 the latents are the same with or without guidance, so the conditional half of the CFG batch
    # sees exactly what an unguided run sees (and the unconditional half would not).
    with capture_cross_attention(pipe.unet, ["up"], steps=[1], latent_size=LATENT,
                                 conditional_half=False) as unguided:
        run_pipe(pipe, unguided, guidance_scale=1.0)
    for key in guided.maps.sums:
        torch.testing.assert_close(guided.maps.mean(*key), unguided.maps.mean(*key), rtol=1e-5, atol=1e-6)


def test_memory_budget_offloads_maps_to_cpu_without_changing_them(pipe):
    with capture_cross_attention(pipe.unet, ["mid"], steps=[2], latent_size=LATENT) as kept:
        run_pipe(pipe, kept, steps=2)
    with capture_cross_attention(pipe.unet, ["mid"], steps=[2], latent_size=LATENT, device_budget=0) as offloaded:
        run_pipe(pipe, offloaded, steps=2)
    assert not kept.maps.offloaded and offloaded.maps.offloaded == set(offloaded.maps.sums)
    for key in kept.maps.sums:
        assert offloaded.maps.sums[key].device.type == "cpu"
        torch.testing.assert_close(offloaded.maps.mean(*key), kept.maps.mean(*key))
    with pytest.raises(ValueError, match="exceed the 77 text tokens"):
        with capture_cross_attention(pipe.unet, ["mid"], steps=[1], tokens=[80], latent_size=LATENT) as capture:
            run_pipe(pipe, capture, steps=1)


def test_full_size_sdxl_unet_config_has_sdxl_base_layers():
    """The benchmark's full-size UNet (built on the meta device: no memory) is SDXL base's architecture."""
    from diffusers import UNet2DConditionModel

    from tests.sdxl_tiny import SDXL_BASE_UNET_CONFIG

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_BASE_UNET_CONFIG)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(2.567e9, rel=1e-3)
    assert [len(resolve_layers(unet, [group])) for group in ("down", "mid", "up", "all")] == [24, 10, 36, 70]


def test_processors_are_restored_after_capture_and_after_an_exception(pipe):
    before = {name: module.processor for name, module in pipe.unet.named_modules() if hasattr(module, "processor")}
    with capture_cross_attention(pipe.unet, ["all"], steps=[1], latent_size=LATENT):
        swapped = {name: m.processor for name, m in cross_attention_layers(pipe.unet).items()}
        assert all(type(p).__name__ == "_RecordingProcessor" for p in swapped.values())
    after = {name: module.processor for name, module in pipe.unet.named_modules() if hasattr(module, "processor")}
    assert all(after[name] is before[name] for name in before)
    with pytest.raises(RuntimeError, match="boom"):
        with capture_cross_attention(pipe.unet, ["mid", "up"], steps=[1], latent_size=LATENT) as capture:
            run_pipe(pipe, capture, steps=2)
            raise RuntimeError("boom")
    after = {name: module.processor for name, module in pipe.unet.named_modules() if hasattr(module, "processor")}
    assert all(after[name] is before[name] for name in before)


def test_unknown_layers_and_unsupported_processors_are_clear_errors(pipe):
    with pytest.raises(ValueError, match=r"unknown cross-attention layer 'mid_block.nope'.*\['all', 'down', 'mid', "
                                         r"'up'\].*mid_block.attentions.0.transformer_blocks.0.attn2"):
        resolve_layers(pipe.unet, ["mid", "mid_block.nope"])
    # A self-attention layer is not a cross-attention layer.
    with pytest.raises(ValueError, match="unknown cross-attention layer"):
        resolve_layers(pipe.unet, ["mid_block.attentions.0.transformer_blocks.0.attn1"])
    layer = cross_attention_layers(pipe.unet)["mid_block.attentions.0.transformer_blocks.0.attn2"]
    original = layer.processor

    class CustomProcessor:
        def __call__(self, attn, hidden_states, *args, **kwargs):
            return original(attn, hidden_states, *args, **kwargs)

    layer.set_processor(CustomProcessor())
    try:
        with pytest.raises(TypeError, match="CustomProcessor is not a plain softmax attention"):
            with capture_cross_attention(pipe.unet, ["mid"], steps=[1], latent_size=LATENT):
                pass
    finally:
        layer.set_processor(original)


def test_words_map_to_token_spans_with_the_pipelines_tokenizers(pipe):
    prompt = "A woodblock print in the style of Hokusai."
    span = word_token_span(pipe.tokenizer, prompt, "Hokusai")
    assert len(span) == 2  # the tiny vocabulary splits it as "hoku" + "sai</w>"
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prompt).input_ids[span[-1]]) == "sai</w>"
    assert concept_token(pipe, prompt, "hokusai") == span[-1]
    assert concept_token(pipe, "A cat eating sushi.", "cat") == 2  # start token, "a", "cat"
    assert end_token(pipe, "") == 1
    with pytest.raises(ValueError, match=r"'horse' .*is not in the prompt.*tokens are \['<\|startoftext\|>'"):
        concept_token(pipe, prompt, "horse")


# ---------------------------------------------------------------------------------------------------------------
# Eq. 3 cosines and the compositional analysis


def test_difference_vectors_and_cosines_on_known_maps():
    key = ("mid", 1)
    base = torch.full((2, 2), 0.25)
    maps = {"a": {key: base + torch.tensor([[1.0, 0], [0, 0]])}, "b": {key: base + torch.tensor([[0, 2.0], [0, 0]])},
            "c": {key: base + torch.tensor([[3.0, 3.0], [0, 0]])}}
    vectors = difference_vectors(maps, {key: base})
    matrix = cosine_matrices(vectors, ["a", "b", "c"])[key]
    expected = torch.tensor([[1, 0, 0.5**0.5], [0, 1, 0.5**0.5], [0.5**0.5, 0.5**0.5, 1]])
    torch.testing.assert_close(matrix, expected)
    assert compositional_similarity(vectors, [("c", "a")])[key]["c"] == pytest.approx(0.5**0.5)


def test_attention_study_cosines_are_symmetric_with_unit_diagonal(pipe):
    prompts = [ConceptPrompt("dog", "A dog, full body, highly detailed photograph.", ("dog",)),
               ConceptPrompt("cat", "A cat, full body, highly detailed photograph.", ("cat",)),
               ConceptPrompt("sushi", "Eating sushi with chopsticks.", ("sushi",)),
               ConceptPrompt("sushi+cat", "A cat eating sushi with chopsticks.", ("cat", "sushi")),
               ConceptPrompt("unconditional", "", ())]
    study = attention_study(pipe, prompts, layers=["mid", "up"], steps=[1, 3], num_inference_steps=3, samples=2,
                            batch_size=2, log=lambda *_: None)
    analysis = study.analysis(feature_layers=study.layers[:1])
    assert analysis["labels"] == ["dog", "cat", "sushi"]
    assert len(analysis["matrices"]) == 6 * 2  # (2 mid + 4 up layers) x 2 steps
    for matrix in analysis["matrices"].values():
        assert matrix.shape == (3, 3)
        torch.testing.assert_close(matrix, matrix.T)
        torch.testing.assert_close(matrix.diagonal(), torch.ones(3))
    assert set(analysis["averages"]) == {"mid", "up", "feature_space"}
    assert analysis["pairs"] == [("sushi+cat@cat", "cat"), ("sushi+cat@sushi", "sushi")]
    for row in analysis["composition"].values():
        assert all(-1 <= value <= 1 for value in row.values())
    summary = json.loads(json.dumps(study.summary(study.layers[:1])))
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("A cat eating sushi with chopsticks.").input_ids)
    assert summary["tokens"]["sushi+cat"] == {"cat": tokens.index("cat</w>"), "sushi": tokens.index("sushi</w>")}
    assert summary["map_shapes"][study.layers[0]] == [4, 4]
    with pytest.raises(ValueError, match="'horse' .*is not in the prompt"):
        attention_study(pipe, [ConceptPrompt("dog", "A dog.", ("horse",))], log=lambda *_: None)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_sdxl_command_writes_results_and_rejects_bad_input(saved_pipe, tmp_path, capsys):
    from lcsbench.cli import main

    out = tmp_path / "report"
    code = main(["sdxl", "--model", str(saved_pipe), "--analysis", "locality", "--out", str(out), "--num-steps", "4",
                 "--stop-steps", "1,4", "--words", "horse", "dog", "cat"])
    assert code == 0
    result = json.loads((out / "locality.json").read_text())
    assert [s["step"] for s in result["steps"]] == [1, 4] and result["words"] == ["horse", "dog", "cat"]
    assert (out / "locality.png").stat().st_size > 0 and (out / "locality_config.json").exists()
    code = main(["sdxl", "--model", str(saved_pipe), "--analysis", "attention", "--out", str(out), "--num-steps", "2",
                 "--capture-steps", "1,2", "--samples", "1", "--layers", "mid",
                 "--concept-prompt", "dog=A dog.|dog", "--concept-prompt", "cat=A cat.|cat",
                 "--concept-prompt", "unconditional="])
    assert code == 0
    result = json.loads((out / "attention.json").read_text())
    assert result["labels"] == ["dog", "cat"] and (out / "cosine_groups.png").exists()
    capsys.readouterr()
    assert main(["sdxl", "--model", str(tmp_path / "nowhere"), "--analysis", "locality", "--out", str(out)]) == 1
    assert "hf download" in capsys.readouterr().err
    assert main(["sdxl", "--model", str(saved_pipe), "--analysis", "attention", "--out", str(out),
                 "--layers", "middle"]) == 1
    assert "valid choices are the groups" in capsys.readouterr().err
