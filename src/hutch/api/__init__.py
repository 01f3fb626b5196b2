"""hutch.api"""
