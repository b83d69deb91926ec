async def test_create_cart(gw):
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u1", "currency": "INR"})
    assert cart["status"] == "ACTIVE"
