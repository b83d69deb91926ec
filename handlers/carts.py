"""The merchant's cart API: create, read, add and remove items, start a payment."""

from __future__ import annotations

from handlers import validate
from handlers.base import BaseHandler


class CartsHandler(BaseHandler):
    name = "carts"

    async def post(self) -> None:
        user_id, currency = validate.new_cart(self.json_body())
        cart = await self.ctx.store.create_cart(self.ctx.settings.partitions, user_id, currency)
        self.set_header("Location", f"/v1/carts/{cart['cart_id']}")
        self.write_json(cart, 201)


class CartHandler(BaseHandler):
    name = "cart"

    async def get(self, cart_id: str) -> None:
        self.write_json(await self.ctx.store.get_cart(validate.cart_id(cart_id)))


class CartItemsHandler(BaseHandler):
    name = "cart_items"

    async def post(self, cart_id: str) -> None:
        cart_id = validate.cart_id(cart_id)
        service_id, name, unit_amount, quantity = validate.new_item(self.json_body())
        cart = await self.ctx.store.change_items(
            cart_id, "add", service_id, name, unit_amount, quantity
        )
        self.write_json(cart)


class CartItemHandler(BaseHandler):
    name = "cart_item"

    async def delete(self, cart_id: str, service_id: str) -> None:
        cart = await self.ctx.store.change_items(
            validate.cart_id(cart_id), "remove", validate.service(service_id)
        )
        self.write_json(cart)


class CartPaymentsHandler(BaseHandler):
    name = "cart_payments"

    async def post(self, cart_id: str) -> None:
        cart_id = validate.cart_id(cart_id)
        provider, customer = validate.new_payment(self.json_body())
        payment = await self.ctx.checkout.start_payment(cart_id, provider, customer)
        self.set_header("Location", f"/v1/payments/{payment['txnid']}")
        self.write_json(payment, 201)
