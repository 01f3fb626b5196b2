"""hutch.runtime.templates"""
