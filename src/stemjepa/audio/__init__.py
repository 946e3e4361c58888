"""stemjepa.audio"""
