"""vlscale.scaling"""
