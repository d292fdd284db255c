"""vlscale.train"""
