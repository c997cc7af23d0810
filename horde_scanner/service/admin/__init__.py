"""The admin API and the review page."""
