"""The gateway's routes, one module per API area, each a router factory bound to its upstream
client. They parse and check requests, make one upstream call and answer with a shape from
`..shapes`."""
