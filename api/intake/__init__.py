"""Intake services: what the routes call to turn a request into a job (validate, plan, create) and to answer
or follow it. Routes import these, never each other."""
