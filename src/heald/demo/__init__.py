"""The demo: a small real system that heald supervises, faults injected into it, and the table
of how heald healed each. ``heald demo`` runs :func:`heald.demo.runner.run_demo`."""
