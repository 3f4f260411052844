"""Secret rotation tasks (``flows/rotate_secret.py``): the store (``store``), the credential
of each kind (``postgres``, ``redis``, ``api_key``) and the consumers (``consumers``). Values
travel as ``opsflow.rotation.SecretValue``: never a plain string in a task's parameters or
return value."""
