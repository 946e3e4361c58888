"""stemjepa.data"""
