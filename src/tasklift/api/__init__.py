"""The client API: ``work``, ``workflow``, ``Workflow``, and the handles they return."""
