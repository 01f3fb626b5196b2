"""hutch.runtime"""
