"""hutch.runtime.gvisor"""
