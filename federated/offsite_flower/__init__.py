"""Flower ServerApp and ClientApp for federated offsite-tuning (FedAvg over adapters)."""
