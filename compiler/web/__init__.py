"""`mailcfg web`: the self-service web app (the seed panel's user and domain-admin levels).

Every change made on the web is a validated git commit of one domain file (`gitstore`); who may
change what is decided in `changes`, where the change is made, never in a page.
"""
