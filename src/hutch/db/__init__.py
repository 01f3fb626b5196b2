"""hutch.db"""
