"""hutch.runtime.network"""
