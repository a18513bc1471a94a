"""Targets and runners: measure the exact artifact where it runs.

The host is measured now; ssh (Jetson) and adb (Android) runners come with the devices issue.
"""
