"""hutch.runtime.namespace"""
