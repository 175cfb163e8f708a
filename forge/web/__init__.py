"""`forge serve`: the fleet as a read-only web page (see forge.web.server)."""
