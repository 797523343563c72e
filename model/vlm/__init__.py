"""Pretrained Hugging Face VLMs as mien's facial MLLM."""
