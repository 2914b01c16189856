"""Times diffusers' WanPipeline end to end on a folder from make_random_wan.py, with the same
initial latents and prompt embeddings `vdit bench e2e` uses (the folder's inputs.safetensors):
loading, every denoising step, VAE decode and post-processing to frames, with the peak GPU
memory. Leaves the final latents in OUT_DIR/diffusers_latents.safetensors, which `vdit bench
e2e` compares with its own.

    python3 e2e_diffusers.py MODEL_DIR OUT_DIR [--steps N]
"""
import argparse
import json
import os
import time

import torch
from diffusers import WanPipeline
from safetensors.torch import load_file, save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    config = json.load(open(os.path.join(a.model, "generation_config.json")))
    width, height = map(int, config["size"].split("x"))
    steps = a.steps or config["steps"]
    inputs = load_file(os.path.join(a.model, "inputs.safetensors"))

    torch.cuda.synchronize()
    start = time.perf_counter()
    # the prompt embeddings come from inputs.safetensors: no text encoder is loaded
    pipe = WanPipeline.from_pretrained(
        a.model, torch_dtype=torch.bfloat16, tokenizer=None, text_encoder=None, transformer_2=None
    ).to("cuda")
    torch.cuda.synchronize()
    loading = time.perf_counter() - start

    marks = []

    def on_step(pipe, step, timestep, kwargs):
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        return kwargs

    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        torch.cuda.synchronize()
        start = time.perf_counter()
        marks.append(start)
        latents = pipe(
            prompt_embeds=inputs["prompt_embeds"].to("cuda", torch.bfloat16),
            negative_prompt_embeds=inputs["negative_prompt_embeds"].to("cuda", torch.bfloat16),
            latents=inputs["latents"].to("cuda", torch.float32),
            height=height, width=width, num_frames=config["frames"], num_inference_steps=steps,
            guidance_scale=config["guidance"], output_type="latent", callback_on_step_end=on_step,
        ).frames
        denoising = time.perf_counter() - start
        save_file({"latents": latents.float().cpu().contiguous()}, os.path.join(a.out, "diffusers_latents.safetensors"))
        # The pipeline's own decode path: denormalise, decode, post-process to frames.
        torch.cuda.synchronize()
        start = time.perf_counter()
        vae = pipe.vae
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents.device, vae.dtype)
        std = 1.0 / torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents.device, vae.dtype)
        video = vae.decode(latents.to(vae.dtype) / std + mean, return_dict=False)[0]
        torch.cuda.synchronize()
        decoding = time.perf_counter() - start
        start = time.perf_counter()
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
        postprocess = time.perf_counter() - start
    step_times = [later - earlier for earlier, later in zip(marks, marks[1:])]
    ordered = sorted(step_times)
    row = {"impl": "diffusers WanPipeline (bf16)", "size": config["size"], "frames": config["frames"],
           "steps": steps, "guidance": config["guidance"], "loading_s": loading,
           "first_step_s": step_times[0] if step_times else None, "step_s_median": ordered[len(ordered) // 2] if ordered else None, "denoising_s": denoising,
           "decoding_s": decoding, "postprocess_s": postprocess,
           "generation_s": denoising + decoding + postprocess,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "frames_shape": list(frames.shape),
           "torch": torch.__version__}
    json.dump(row, open(os.path.join(a.out, "e2e_diffusers.json"), "w"), indent=2)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
