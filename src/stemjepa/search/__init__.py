"""stemjepa.search"""
