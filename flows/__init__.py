"""Prefect flows of baldflow: a campaign of active-learning rounds."""
