"""vlscale.eval"""
