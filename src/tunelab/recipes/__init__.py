"""Recipes: the script of one command, walking config -> data -> model -> strategy -> engine."""
