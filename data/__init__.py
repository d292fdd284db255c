"""vlscale.data"""
