"""vlscale.models"""
