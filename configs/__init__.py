"""vlscale.configs"""
