"""For operators: the admin CLI (`chatctl`) and readable exports."""
