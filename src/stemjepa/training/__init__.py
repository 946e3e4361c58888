"""stemjepa.training"""
