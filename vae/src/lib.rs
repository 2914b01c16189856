//! The Wan 2.1 VAE (AutoencoderKLWan): causal 3D convolutions, latents to frames and back.
