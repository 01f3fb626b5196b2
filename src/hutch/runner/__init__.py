"""hutch.runner"""
